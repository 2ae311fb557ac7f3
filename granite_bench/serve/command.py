"""`granite-bench serve`'s options checked with light imports only (no torch, no transformers, no fastapi)."""

from __future__ import annotations

import importlib.util

from .. import preflight
from ..preflight import BadInput
from .server import ServeArgs


def require_serving_extra(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise BadInput(f"{', '.join(missing)} not installed: pip install 'granite-bench[serve]'")


def check_port(port: int) -> int:
    if not 0 < port < 65536:
        raise BadInput(f"--port must lie in 1..65535, got {port}")
    return port


def serve_args(model, host, port, dtype, batch_size, seq_len, buckets, tp, device, compile, gather_ms,
               served_model_name, layers) -> ServeArgs:
    require_serving_extra("fastapi", "uvicorn")
    check_port(port)
    dtype = preflight.dtype_name(dtype)
    preflight.positive(batch_size, "--batch-size")
    preflight.positive(seq_len, "--seq-len")
    preflight.positive(tp, "--tp")
    preflight.device_name(device)
    if gather_ms < 0:
        raise BadInput(f"--gather-ms must be 0 or more, got {gather_ms:g}")
    if buckets and max(buckets) > seq_len:
        raise BadInput(f"bucket {max(buckets)} is longer than --seq-len {seq_len}: lower --buckets or raise --seq-len")
    config, folder = preflight.model_config(model, layers)
    dims = preflight.check_model(config, tp, where=str(folder or model))
    if folder is not None:
        preflight.check_weights(folder, dims)
    preflight.check_memory(dims, dtype, batch_size, seq_len, device)
    return ServeArgs(model=model, host=host, port=port, dtype=dtype, batch_size=batch_size, seq_len=seq_len,
                     buckets=buckets, device=device, tp=tp, compile=compile, gather_ms=gather_ms,
                     served_model_name=served_model_name, layers=layers)
