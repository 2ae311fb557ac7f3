"""`granite-bench serve` as a user starts it: options refused before anything loads, and a real process that serves
on a loopback port until it is interrupted."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import httpx
import pytest
from typer.testing import CliRunner

from granite_bench.cli import app as cli_app


@pytest.mark.parametrize("args, says", [
    (["--port", "70000"], "--port"),
    (["--model", "no-such-preset"], "no-such-preset"),
    (["--buckets", "512", "--seq-len", "256"], "bucket 512"),
    (["--gather-ms", "-1"], "--gather-ms"),
    (["--batch-size", "0"], "--batch-size"),
])
def test_bad_serve_options_are_refused_with_one_line_and_exit_2(args, says):
    out = CliRunner().invoke(cli_app, ["serve", *args])
    assert out.exit_code == 2 and says in out.output


@pytest.mark.slow
def test_the_serve_command_answers_on_its_port_and_stops_on_ctrl_c(tiny_model_dir, server_process):
    url, process = server_process([sys.executable, "-m", "granite_bench.cli", "serve", "--model", str(tiny_model_dir),
                                   "--served-model-name", "tiny", "--port", "PORT", "--batch-size", "2",
                                   "--seq-len", "64", "--buckets", "32"], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
    try:
        reply = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 3},
                           timeout=30).json()
        assert reply["usage"]["completion_tokens"] == 3 and reply["model"] == "tiny"
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert f"serving tiny on {url}" in output


LIGHT_REFUSALS = [["serve", "--port", "0"], ["load", "--endpoint", "http://127.0.0.1:1", "--requests", "1"],
                  ["load", "--endpoint", "nowhere"], ["parity", "--endpoint", "http://127.0.0.1:1", "--top-k", "21"]]


@pytest.mark.parametrize("argv", LIGHT_REFUSALS, ids=["serve-port", "load-unreachable", "load-url", "parity-top-k"])
def test_refusals_import_neither_torch_nor_transformers(argv):
    code = textwrap.dedent(f"""
        import sys
        from typer.testing import CliRunner
        from granite_bench.cli import app
        result = CliRunner().invoke(app, {argv!r})
        assert result.exit_code == 2, result.output
        print("heavy:", sorted(m for m in ("torch", "transformers") if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "heavy: []" in done.stdout
