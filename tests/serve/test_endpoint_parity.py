"""`granite-bench parity --endpoint`: the goldens judged against `granite-bench serve` of the implementation (PASS),
of the implementation with a planted bug (FAIL), and against endpoints that cannot be checked (exit 2)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from granite_bench.accuracy.seeded_bugs import SEEDED_BUGS
from granite_bench.cli import app as cli_app
from granite_bench.serve.server import background_server

PROMPTS = "The capital of France is\nIBM Granite models are trained on\n1, 1, 2, 3, 5, 8, 13,\nQ: Why?\nA:\n"


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("endpoint-parity") / "prompts.txt"
    path.write_text(PROMPTS)
    return path


def endpoint_parity(url: str, prompts_file, *extra: str):
    return CliRunner().invoke(cli_app, ["parity", "--endpoint", url, "--model", "tiny-gqa", "--prompts",
                                        str(prompts_file), "--num-tokens", "8", *extra])


def test_the_implementation_served_passes_and_the_run_is_stored_with_device_endpoint(served, prompts_file, tmp_path):
    from granite_bench.results import ResultStore
    url, _, _ = served
    out = endpoint_parity(url, prompts_file, "--results-dir", str(tmp_path))
    assert out.exit_code == 0, out.output
    assert "PASS" in out.output
    store = ResultStore(tmp_path)
    summary, positions = store.read("parity_summary"), store.read("parity_positions")
    assert set(summary["device"]) == {"endpoint"} and set(summary["suite"]) == {"parity/endpoint"}
    assert summary["passed"].all() and (summary["greedy_match_rate"] == 1.0).all()
    assert (summary["worst_logprob_err"] < 1e-4).all()
    # every prompt position after the first, every generated position (no divergence), and the reference's 8
    # tokens teacher-forced
    lengths = list(summary["prompt_len"])
    assert len(positions) == sum(n - 1 + 8 + 8 for n in lengths)
    assert set(positions["phase"]) == {"context_encoding", "token_generation", "teacher_forced"}


@pytest.mark.parametrize("bug", ["rope_interleaved", "kv_cache_written_one_slot_early"])
def test_a_served_model_with_a_planted_bug_fails_with_exit_1(served, prompts_file, bug):
    url, _, _ = served
    with SEEDED_BUGS[bug].patch():     # the server runs in this process: its model now has the bug
        out = endpoint_parity(url, prompts_file, "--no-save")
    assert out.exit_code == 1, out.output
    assert "FAIL" in out.output


def replies_without(field: str) -> FastAPI:
    """An endpoint that answers completions like `transformers serve` does (no log-probabilities) or, for
    'token ids', with log-probabilities keyed by token text."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"data": [{"id": "tiny-gqa"}]}

    @app.post("/v1/completions")
    async def completions(body: dict):
        n = len(body["prompt"])
        choice = {"index": 0, "text": "ab", "finish_reason": "length", "logprobs": None}
        if field == "token ids":
            choice["prompt_logprobs"] = [None] + [{"5": {"logprob": -1.0, "rank": 1}}] * (n - 1)
            choice["logprobs"] = {"tokens": ["a"], "token_logprobs": [-1.0], "top_logprobs": [{"a": -1.0}]}
        return {"choices": [choice]}

    return app


@pytest.mark.parametrize("field, says", [("prompt_logprobs", "prompt_logprobs"),
                                         ("token ids", "return_tokens_as_token_ids")])
def test_an_endpoint_that_leaves_out_what_parity_needs_is_named_with_exit_2(prompts_file, field, says, tmp_path):
    with background_server(replies_without(field)) as url:
        out = endpoint_parity(url, prompts_file, "--results-dir", str(tmp_path))
    assert out.exit_code == 2, out.output
    assert says in out.output
    assert "goldens:" not in out.output      # refused before any reference work
    assert not any(tmp_path.iterdir())       # nothing stored as a verdict


def test_an_unreachable_endpoint_is_refused_with_exit_2(prompts_file):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = endpoint_parity(f"http://127.0.0.1:{port}", prompts_file)
    assert out.exit_code == 2 and "unreachable" in out.output


def test_a_bf16_served_model_passes_the_bf16_profile_and_fails_the_fp32_one(prompts_file, serve_tiny):
    """bf16 rounding moves served log-probabilities by ~0.3 and reorders the edge of the served top-20: within the
    bf16 profile (top-10 of the served 20 at 4%), far outside fp32's."""
    with serve_tiny(dtype="bfloat16") as (url, _, _):
        bf16 = endpoint_parity(url, prompts_file, "--dtype", "bfloat16", "--no-save")
        fp32 = endpoint_parity(url, prompts_file, "--dtype", "float32", "--no-save")
    assert bf16.exit_code == 0, bf16.output
    assert fp32.exit_code == 1, fp32.output
