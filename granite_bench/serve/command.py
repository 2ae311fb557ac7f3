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
        preflight.check_weights(folder, config)
    preflight.check_memory(dims, dtype, batch_size, seq_len, device)
    return ServeArgs(model=model, host=host, port=port, dtype=dtype, batch_size=batch_size, seq_len=seq_len,
                     buckets=buckets, device=device, tp=tp, compile=compile, gather_ms=gather_ms,
                     served_model_name=served_model_name, layers=layers)


SLO_KEYS = ("ttft", "tpot", "itl", "e2e")


def endpoint_url(url: str) -> str:
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1].strip("/")) == 0:
        raise BadInput(f"--endpoint takes a base URL such as http://127.0.0.1:8000, got {url!r}")
    return url.rstrip("/").removesuffix("/v1")


def parse_rates(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        rates = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInput("--rates takes comma-separated requests per second, e.g. --rates 1,2,4,inf") from None
    if not rates or any(not r > 0 for r in rates):
        raise BadInput("--rates takes positive requests per second (inf = all at once), e.g. --rates 1,2,4,inf")
    return rates


def parse_slo(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    slo = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        try:
            slo[key.strip()] = float(value)
        except ValueError:
            key = None
        if key not in SLO_KEYS or not slo.get(key, 0) > 0:
            raise BadInput(f"--slo takes KEY=MS pairs with KEY in {', '.join(SLO_KEYS)}, e.g. --slo ttft=500,tpot=50")
    return slo


def load_args(endpoint, model, served_model_name, api, concurrency, rates, requests, duration, input_len, output_len,
              slo, burstiness, seed, results_dir, timeout, stop_at_saturation, ignore_eos):
    require_serving_extra("httpx", "aiohttp")
    from .load_command import LoadArgs
    if api not in ("completions", "chat"):
        raise BadInput(f"--api takes completions or chat, got {api!r}")
    if concurrency is not None and rates is not None:
        raise BadInput("give --concurrency or --rates, not both (closed loop or open loop)")
    rate_list = parse_rates(rates)
    if rate_list and any(r == float("inf") for r in rate_list) and requests is None:
        raise BadInput("--rates inf sends every request at once: give --requests N")
    preflight.positive(requests, "--requests")
    preflight.positive(input_len, "--input-len")
    preflight.positive(output_len, "--output-len")
    if duration is not None and not duration > 0:
        raise BadInput(f"--duration must be positive seconds, got {duration:g}")
    if not burstiness > 0:
        raise BadInput(f"--burstiness must be positive (1 = Poisson), got {burstiness:g}")
    if not timeout > 0:
        raise BadInput(f"--timeout must be positive seconds, got {timeout:g}")
    vocab = None
    if model is not None:
        config, _ = preflight.model_config(model)
        vocab = int(config.get("vocab_size", 0)) or None
    preflight.results_dir(results_dir, need_bytes=1 << 20)
    return LoadArgs(endpoint=endpoint_url(endpoint), api=api, concurrency=concurrency, rates=rate_list,
                    requests=requests, duration=duration, input_len=input_len, output_len=output_len,
                    slo=parse_slo(slo), burstiness=burstiness, seed=seed, model=model, vocab_size=vocab,
                    served_model_name=served_model_name, results_dir=results_dir, timeout_s=timeout,
                    stop_at_saturation=stop_at_saturation, ignore_eos=ignore_eos)


def endpoint_parity_args(parity: dict, endpoint: str, top_k: int, served_model_name: str | None):
    """EndpointParityArgs from parity's checked options and the endpoint's own."""
    require_serving_extra("httpx")
    if not 1 <= top_k <= 20:
        raise BadInput(f"--top-k must lie in 1..20 (vLLM's default max_logprobs is 20), got {top_k}")
    url = endpoint_url(endpoint)
    from .parity_command import EndpointParityArgs   # imports torch: only once the options are checked
    return EndpointParityArgs(endpoint=url, model=parity["model"], dtype=parity["dtype"],
                              num_tokens=parity["num_tokens"], suite_prompts=parity["suite_prompts"],
                              tolerance=parity["tolerance"], top_k=top_k, served_model_name=served_model_name,
                              layers=parity["layers"], goldens=parity["goldens"], max_memory=parity["max_memory"],
                              results_dir=parity["results_dir"])
