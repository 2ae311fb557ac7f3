"""Servers the serve tests share: `granite-bench serve`'s app over tiny-gqa on a loopback port of this process."""

from __future__ import annotations

import contextlib
import functools

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

SERVE_SHAPE = dict(batch_size=4, seq_len=128, buckets=[32, 64])


@contextlib.contextmanager
def serving(model_dir, **overrides):
    """(base URL, app, runner) of a checkpoint served at batch 4; a 100 ms gather window, so requests a test sends
    together land in one batch even on a loaded machine."""
    from granite_bench.serve.server import ServeArgs, background_server, build_app
    app, runner = build_app(ServeArgs(model=str(model_dir), served_model_name="tiny-gqa",
                                      **{"gather_ms": 100, **SERVE_SHAPE, **overrides}))
    try:
        with background_server(app) as url:
            yield url, app, runner
    finally:
        runner.close()


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    """tiny-gqa served in float32 for a whole test module."""
    with serving(tiny_model_dir) as server:
        yield server


@pytest.fixture
def serve_tiny(tiny_model_dir):
    """serve_tiny(**ServeArgs overrides): a context manager serving tiny-gqa for one test."""
    return functools.partial(serving, tiny_model_dir)


def free_loopback_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_process():
    """start(argv_with_PORT, env, health_path, timeout_s) -> (base URL, Popen): a server process on a free loopback port
    (the string PORT in argv is replaced by it), once its health path answers 200; terminated at teardown if it still
    runs."""
    import os
    import subprocess
    import time

    import httpx
    started = []

    def start(argv: list[str], env: dict | None = None, health: str = "/health", timeout_s: float = 180.0, **popen):
        port = free_loopback_port()
        process = subprocess.Popen([str(port) if a == "PORT" else a for a in argv],
                                   env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, **popen)
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(url + health, timeout=2).status_code == 200:
                    return url, process
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{' '.join(argv[:4])} did not answer on {url}{health} within {timeout_s:g} s")
            time.sleep(0.2)

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
