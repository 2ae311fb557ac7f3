"""The load generator's own overhead: `granite-bench load`'s request code against tests/serve/timed_server.py (TTFT
and ITL known by construction), the server on one core and the client on another.

    PYTHONPATH=. python3 scripts/load_overhead.py [--ttft-ms 50] [--itl-ms 20] [--tokens 32] [--waves 4]

Per concurrency (1 and 64): the TTFT and ITL the load generator reports against the configured truth, and split by
the server's own CLOCK_MONOTONIC stamps (the same clock as the client's perf_counter on Linux): how late the server
sent each chunk (its own lateness, not the client's), and how long after its send the client stamped it (the
client's measurement error per chunk)."""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from granite_bench.serve import load
from granite_bench.serve.load_command import LoadArgs, run_level

ROOT = Path(__file__).resolve().parents[1]
server_stamps: contextvars.ContextVar[list] = contextvars.ContextVar("server_stamps")


def recording_chunk_text(original):
    def chunk_text(payload, api):
        text = original(payload, api)
        if text is not None and "sent" in payload:
            server_stamps.get().append((payload["arrived"], payload["sent"]))
        return text
    return chunk_text


def start_server(port: int, ttft_ms: float, itl_ms: float) -> subprocess.Popen:
    env = {**os.environ, "TIMED_TTFT_MS": str(ttft_ms), "TIMED_ITL_MS": str(itl_ms)}
    command = [sys.executable, "-m", "uvicorn", "timed_server:app", "--app-dir", str(ROOT / "tests/serve"),
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(["taskset", "-c", "1", *command], env=env)
    for _ in range(200):
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the timed server did not start")


def pct(values, p) -> float:
    return float(np.percentile(np.asarray(values) * 1000, p)) if len(values) else float("nan")


def measure(url: str, concurrency: int, waves: int, tokens: int, ttft_s: float, itl_s: float) -> dict:
    args = LoadArgs(endpoint=url, concurrency=[concurrency], requests=concurrency * waves, output_len=tokens)
    pairs = []
    original_send = load.stream_request

    async def stream_request(*a, **k):
        server_stamps.set([])
        result = await original_send(*a, **k)
        pairs.append((result, server_stamps.get()))
        return result

    load.stream_request = stream_request
    try:
        results, seconds = asyncio.run(run_level(args, "timed", concurrency, lambda i: "x", None, lambda r: None))
    finally:
        load.stream_request = original_send
    summary = load.level_summary(results, seconds, {})
    client_delay, lateness_first, server_itl = [], [], []
    for result, stamps in pairs:
        if not result.ok or len(stamps) != len(result.arrivals):
            continue
        client_delay += [a - sent for a, (_, sent) in zip(result.arrivals, stamps)]
        lateness_first.append(stamps[0][1] - stamps[0][0] - ttft_s)
        server_itl += [b[1] - a[1] for a, b in zip(stamps, stamps[1:])]
    return {"concurrency": concurrency, "requests_ok": summary["requests_ok"],
            "ttft_p50": summary["ttft_ms_p50"], "ttft_p99": summary["ttft_ms_p99"],
            "itl_p50": summary["itl_ms_p50"], "itl_p99": summary["itl_ms_p99"],
            "server_itl_p50": pct(server_itl, 50), "server_itl_p99": pct(server_itl, 99),
            "server_late_first_p50": pct(lateness_first, 50),
            "client_delay_p50": pct(client_delay, 50), "client_delay_p99": pct(client_delay, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--itl-ms", type=float, default=20.0)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--waves", type=int, default=4)
    parser.add_argument("--port", type=int, default=18765)
    options = parser.parse_args()
    load.chunk_text = recording_chunk_text(load.chunk_text)
    os.sched_setaffinity(0, {0})                           # the client: one core
    server = start_server(options.port, options.ttft_ms, options.itl_ms)
    try:
        print(f"load average before: {open('/proc/loadavg').read().strip()}")
        print(f"truth: TTFT {options.ttft_ms:g} ms, ITL {options.itl_ms:g} ms, {options.tokens} tokens per request")
        print("| concurrency | ok | TTFT p50 / p99 ms | ITL p50 / p99 ms | server ITL p50 / p99 ms | server late "
              "on 1st token p50 ms | client stamp after server send p50 / p99 ms |")
        print("|---|---|---|---|---|---|---|")
        for concurrency in (1, 64):
            r = measure(f"http://127.0.0.1:{options.port}", concurrency, options.waves, options.tokens,
                        options.ttft_ms / 1000, options.itl_ms / 1000)
            print(f"| {r['concurrency']} | {r['requests_ok']} | {r['ttft_p50']:.1f} / {r['ttft_p99']:.1f} | "
                  f"{r['itl_p50']:.2f} / {r['itl_p99']:.1f} | {r['server_itl_p50']:.2f} / {r['server_itl_p99']:.1f} | "
                  f"{r['server_late_first_p50']:.2f} | {r['client_delay_p50']:.2f} / {r['client_delay_p99']:.1f} |")
        print(f"load average after: {open('/proc/loadavg').read().strip()}")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
