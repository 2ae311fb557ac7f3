"""`granite-bench load`: request timing stamped on arrival, failures counted (never a TTFT of 0), closed and open
loops, saturation, the load_points table, Ctrl-C keeping finished levels."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import sys
from pathlib import Path

import aiohttp
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.sse import format_sse_event
from typer.testing import CliRunner

from granite_bench.cli import app as cli_app
from granite_bench.serve import load
from granite_bench.serve.load_command import LoadArgs, LoadInterrupted, run_load
from granite_bench.serve.server import background_server

HERE = Path(__file__).parent
TTFT_MS, ITL_MS = 60.0, 20.0


@pytest.fixture(scope="module")
def timed_endpoint(server_process):
    """tests/serve/timed_server.py in its own process on a loopback port: TTFT 60 ms, ITL 20 ms by construction."""
    url, _ = server_process([sys.executable, "-m", "uvicorn", "timed_server:app", "--app-dir", str(HERE), "--host",
                             "127.0.0.1", "--port", "PORT", "--log-level", "warning"], health="/v1/models",
                            env={"TIMED_TTFT_MS": str(TTFT_MS), "TIMED_ITL_MS": str(ITL_MS)})
    return url


class QuietProgress:
    """A stand-in for the rich progress bar (optionally interrupting at a level, as Ctrl-C would)."""

    def __init__(self, interrupt_at: int | None = None):
        self.tasks, self.interrupt_at = 0, interrupt_at

    def __call__(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs):
        self.tasks += 1
        if self.tasks == self.interrupt_at:
            raise KeyboardInterrupt
        return self.tasks

    def advance(self, *args):
        pass


def sweep(url: str, **kwargs) -> list[dict]:
    rows, _ = run_load(LoadArgs(endpoint=url, **kwargs), QuietProgress(), lambda text: None)
    return rows


def test_ttft_and_itl_measured_against_a_server_with_known_timing(timed_endpoint):
    """A sanity bound only (a loaded 2-core machine shares its cores with this client and the server): never below
    the truth (a chunk cannot arrive before it is sent), and within 30% + 5 ms of it at the median."""
    rows = sweep(timed_endpoint, concurrency=[1, 8], requests=None, output_len=8)
    assert [r["requests_ok"] for r in rows] == [16, 32] and all(r["requests_failed"] == 0 for r in rows)
    for row in rows:
        assert TTFT_MS <= row["ttft_ms_p50"] <= TTFT_MS * 1.3 + 5
        assert ITL_MS * 0.7 - 5 <= row["itl_ms_p50"] <= ITL_MS * 1.3 + 5
        assert row["output_tokens"] == 8 * row["requests_ok"]       # from the server's usage
        truth_e2e = TTFT_MS + 7 * ITL_MS
        assert truth_e2e <= row["e2e_ms_p50"] <= truth_e2e * 1.3 + 5
    assert rows[1]["output_throughput"] > 4 * rows[0]["output_throughput"]   # 8 in flight, not serialised


def misbehaving_app() -> FastAPI:
    """One endpoint that fails in every way a load test must count: by the prompt it is sent."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"data": [{"id": "bad"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        how = (await request.json())["prompt"]
        tokens = {"ok": 2, "cut": 2, "empty": 0}.get(how, 0)

        async def stream():
            for k in range(tokens):
                yield format_sse_event(data_str=json.dumps({"choices": [{"index": 0, "text": f"t{k}"}]}))
            if how == "error":
                yield format_sse_event(data_str=json.dumps({"error": {"message": "engine died"}}))
            if how != "cut":
                yield format_sse_event(data_str="[DONE]")

        if how == "html":
            return HTMLResponse("<html>a login page</html>")
        if how == "500":
            return JSONResponse({"message": "overloaded"}, status_code=500)
        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


@pytest.mark.parametrize("how, says", [
    ("html", "text/html"), ("500", "HTTP 500"), ("cut", "without [DONE] or a finish_reason after 2 tokens"),
    ("empty", "no token came"), ("error", "engine died"),
])
def test_a_request_that_fails_is_counted_and_gives_no_latency(how, says):
    async def one(url):
        async with aiohttp.ClientSession() as session:
            return await load.stream_request(session, url + "/v1/completions", {"prompt": how}, "completions")

    with background_server(misbehaving_app()) as url:
        result = asyncio.run(one(url))
        good = asyncio.run(one_ok(url))
    assert not result.ok and says in result.error
    assert result.ttft is None and result.e2e is None
    summary = load.level_summary([result, good], 1.0, {})
    assert (summary["requests_ok"], summary["requests_failed"]) == (1, 1)
    assert summary["ttft_ms_p50"] == pytest.approx(good.ttft * 1000)   # the failed request adds no TTFT
    assert says in summary["first_error"]


async def one_ok(url):
    async with aiohttp.ClientSession() as session:
        return await load.stream_request(session, url + "/v1/completions", {"prompt": "ok"}, "completions")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_level_where_every_request_failed_is_stored_and_exits_1(tmp_path):
    from granite_bench.results import ResultStore
    with background_server(misbehaving_app()) as url:       # text prompts get a stream without a token
        out = CliRunner().invoke(cli_app, ["load", "--endpoint", url, "--concurrency", "2", "--requests", "3",
                                           "--results-dir", str(tmp_path)])
    assert out.exit_code == 1 and "no token came" in out.output
    points = ResultStore(tmp_path).read("load_points")
    assert list(points["requests_failed"]) == [3] and points["ttft_ms_p50"].isna().all()


def test_an_unreachable_endpoint_is_refused_with_one_line_and_exit_2():
    out = CliRunner().invoke(cli_app, ["load", "--endpoint", f"http://127.0.0.1:{closed_port()}", "--requests", "1"])
    assert out.exit_code == 2 and "unreachable" in out.output


@pytest.mark.parametrize("args, says", [
    (["--endpoint", "localhost:8000"], "base URL"),
    (["--endpoint", "http://127.0.0.1:1", "--concurrency", "1", "--rates", "2"], "not both"),
    (["--endpoint", "http://127.0.0.1:1", "--rates", "inf"], "--requests"),
    (["--endpoint", "http://127.0.0.1:1", "--rates", "0"], "positive"),
    (["--endpoint", "http://127.0.0.1:1", "--slo", "ttft=fast"], "KEY=MS"),
    (["--endpoint", "http://127.0.0.1:1", "--api", "embeddings"], "completions or chat"),
])
def test_bad_load_options_are_refused_before_any_request(args, says):
    out = CliRunner().invoke(cli_app, ["load", *args])
    assert out.exit_code == 2 and says in out.output


def test_open_loop_arrivals_have_the_asked_rate_and_inf_starts_everything_at_once():
    gaps = load.arrival_gaps(50.0, 4000, 1.0, seed=1)
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 50, rel=0.05)
    bursty = load.arrival_gaps(50.0, 4000, 0.25, seed=1)
    assert sum(bursty) / len(bursty) == pytest.approx(1 / 50, rel=0.1)
    variance = lambda g: sum((x - sum(g) / len(g)) ** 2 for x in g) / len(g)   # noqa: E731
    assert variance(bursty) > 2 * variance(gaps)      # gamma shape 0.25: four times Poisson's variance
    assert load.arrival_gaps(math.inf, 5, 1.0, seed=1) == [0.0] * 5


def test_saturation_is_flat_throughput_with_climbing_latency():
    grow = {"output_throughput": 100.0, "e2e_ms_p50": 100.0}
    assert not load.saturated([], grow)
    assert not load.saturated([grow], {"output_throughput": 180.0, "e2e_ms_p50": 160.0})   # still growing
    assert load.saturated([grow], {"output_throughput": 105.0, "e2e_ms_p50": 190.0})
    assert not load.saturated([grow], {"output_throughput": 105.0, "e2e_ms_p50": 110.0})   # flat but not slower


def test_a_rate_sweep_is_stored_as_load_points_with_goodput(timed_endpoint, tmp_path):
    from granite_bench.results import ResultStore
    out = CliRunner().invoke(cli_app, ["load", "--endpoint", timed_endpoint, "--rates", "20,inf", "--requests", "6",
                                       "--output-len", "4", "--slo", f"ttft={TTFT_MS * 3:g}", "--results-dir",
                                       str(tmp_path)])
    assert out.exit_code == 0, out.output
    points = ResultStore(tmp_path).read("load_points")
    assert list(points["rate"]) == [20.0, math.inf] and set(points["device"]) == {"endpoint"}
    assert list(points["requests_ok"]) == [6, 6]
    assert (points["goodput"] > 0).all() and (points["slo_attainment"] <= 1).all()
    assert points["ttft_ms_p99"].notna().all()


def test_ctrl_c_stores_the_levels_already_finished(timed_endpoint, tmp_path):
    from granite_bench.results import ResultStore
    args = LoadArgs(endpoint=timed_endpoint, concurrency=[1, 2], requests=2, output_len=2, results_dir=tmp_path)
    with pytest.raises(LoadInterrupted) as stopped:
        run_load(args, QuietProgress(interrupt_at=2), lambda text: None)
    assert len(stopped.value.kept) == 1 and stopped.value.paths
    assert list(ResultStore(tmp_path).read("load_points")["concurrency"]) == [1]


def test_chat_and_token_id_completions_load_granite_bench_serve(served):
    """Both APIs streamed from the project's own server: every request ok, tokens from its usage chunk."""
    url, _, _ = served
    chat = sweep(url, api="chat", concurrency=[2], requests=2, output_len=3, input_len=4)
    ids = sweep(url, concurrency=[2], requests=2, output_len=3, input_len=4, vocab_size=4096)
    for rows in (chat, ids):
        assert rows[0]["requests_ok"] == 2 and rows[0]["output_tokens"] == 6 and rows[0]["ttft_ms_p50"] > 0


def test_duration_bounds_both_loops_and_closed_loop_keeps_its_concurrency():
    in_flight, most = 0, 0

    async def send(index):
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return load.RequestResult(ok=True, arrivals=[0.0], end=0.01, output_tokens=1)

    closed, seconds = asyncio.run(load.closed_loop(send, 3, None, 0.2))
    assert most == 3 and 0.2 <= seconds < 1.0 and 15 <= len(closed) <= 70
    opened, _ = asyncio.run(load.open_loop(send, 100.0, None, 0.3, 1.0, seed=0))
    assert 10 <= len(opened) <= 60            # ~30 arrivals at 100/s in 0.3 s (Poisson)
    burst, _ = asyncio.run(load.open_loop(send, math.inf, 8, None, 1.0, seed=0))
    assert len(burst) == 8
