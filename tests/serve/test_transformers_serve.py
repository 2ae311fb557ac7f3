"""`granite-bench load` and `parity --endpoint` against a third-party server: HF Transformers' own `transformers serve`
serving the canary checkpoint (it ships a tokenizer) from its local folder, offline, on a loopback port."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from granite_bench.cli import app as cli_app
from granite_bench.resources import suite_path

pytestmark = pytest.mark.slow


def serve_available() -> bool:
    from transformers.utils.import_utils import is_serve_available
    return shutil.which("transformers") is not None and is_serve_available()


@pytest.fixture(scope="module")
def transformers_endpoint(server_process):
    if not serve_available():
        pytest.skip("transformers serve needs transformers[serving] (fastapi, uvicorn, openai)")
    url, _ = server_process(["transformers", "serve", str(suite_path("models/canary")), "--host", "127.0.0.1",
                             "--port", "PORT"], env={"HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    return url


def test_load_measures_transformers_serve(transformers_endpoint, tmp_path):
    """Text prompts (it refuses token ids) and no ignore_eos (it refuses unknown fields); it ends its streams with a
    finish_reason and no [DONE]."""
    from granite_bench.results import ResultStore
    out = CliRunner().invoke(cli_app, ["load", "--endpoint", transformers_endpoint, "--concurrency", "1,2",
                                       "--requests", "4", "--input-len", "8", "--output-len", "4", "--stop-at-eos",
                                       "--results-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    points = ResultStore(tmp_path).read("load_points")
    assert list(points["requests_ok"]) == [4, 4] and list(points["requests_failed"]) == [0, 0]
    assert (points["ttft_ms_p50"] > 0).all() and (points["output_tokens"] > 0).all()


def test_parity_against_transformers_serve_is_refused_with_exit_2(transformers_endpoint, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\n")
    out = CliRunner().invoke(cli_app, ["parity", "--endpoint", transformers_endpoint, "--model", "canary",
                                       "--prompts", str(prompts), "--num-tokens", "4", "--results-dir",
                                       str(tmp_path / "results")])
    assert out.exit_code == 2, out.output
    assert "/v1/completions answered HTTP" in out.output
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())
