"""`granite-bench serve`: a runner behind the OpenAI-compatible app, on uvicorn. Not a vLLM replacement: greedy
only, static batching, one model, the API subset parity and load testing need."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ServeArgs:
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "float32"
    batch_size: int = 8
    seq_len: int = 256
    buckets: list[int] | None = None
    device: str = "cpu"
    tp: int = 1
    compile: bool = False
    gather_ms: float = 5.0
    served_model_name: str | None = None
    layers: int | None = None


def build_app(args: ServeArgs):
    """(app, runner): the runner loaded from `args.model` and the app serving it under its served name."""
    from ..reference.weights import resolve_model_dir
    from ..runtime.select import build_runner
    from .app import create_app
    from .engine import BatchingEngine
    from .tokens import TokenCodec
    model_dir = resolve_model_dir(args.model, num_layers=args.layers)
    runner = build_runner(str(model_dir), dtype=args.dtype, device=args.device, tp_degree=args.tp,
                          batch_size=args.batch_size, seq_len=args.seq_len, buckets=args.buckets, compile=args.compile)
    config = runner.hf_config
    codec = TokenCodec(Path(model_dir), config.vocab_size, getattr(config, "eos_token_id", None))
    app = create_app(BatchingEngine(runner, args.gather_ms), codec, args.served_model_name or args.model)
    return app, runner


def run_server(app, host: str, port: int, log_level: str = "info") -> None:
    """Serve until Ctrl-C (uvicorn handles the signal and shuts the app down)."""
    import uvicorn
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


@contextlib.contextmanager
def background_server(app, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 30.0):
    """uvicorn serving `app` in a thread of this process (the tests' servers); yields its base URL."""
    import time

    import uvicorn
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="granite-bench-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server on {host}:{port} did not start within {start_timeout_s:g} s")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
