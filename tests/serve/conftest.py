"""Servers the serve tests share: `granite-bench serve`'s app over tiny-gqa on a loopback port of this process."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

SERVE_SHAPE = dict(batch_size=4, seq_len=128, buckets=[32, 64])


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    """(base URL, app, runner) of tiny-gqa served at batch 4; a 100 ms gather window, so requests a test sends
    together land in one batch even on a loaded machine."""
    from granite_bench.serve.server import ServeArgs, background_server, build_app
    app, runner = build_app(ServeArgs(model=str(tiny_model_dir), served_model_name="tiny-gqa", gather_ms=100,
                                      **SERVE_SHAPE))
    with background_server(app) as url:
        yield url, app, runner
    runner.close()
