"""The load generator (aiohttp): streamed requests against an OpenAI-compatible endpoint, closed-loop (a fixed number of
requests in flight) or open-loop (requests started at Poisson or gamma arrival times), and the statistics of a level.

Each line of the event stream is stamped (time.perf_counter) as the client reads it, before it is parsed. A request
counts as failed when the server answers an error, something that is not an event stream, an error inside the stream,
a stream that ends with neither `[DONE]` nor a finish_reason, or no token at all: a failed request never contributes
a TTFT (never a TTFT of 0).
Output tokens come from the server's usage when it sends one, else from `count_tokens` (the tokenizer of --model)
over the text, else from the number of content chunks.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import aiohttp
import numpy as np

PERCENTILES = (50, 90, 99)
SATURATION_GROWTH = 1.10     # a level that adds less than 10% throughput over the best so far ...
SATURATION_LATENCY = 1.5     # ... while its median E2E latency grew 1.5x over the previous level: saturated


@dataclass
class RequestResult:
    ok: bool
    error: str | None = None
    sent: float = 0.0                                   # perf_counter when the request was sent
    arrivals: list[float] = field(default_factory=list)  # perf_counter of each content chunk as it was read
    end: float | None = None                            # when [DONE] (or the end of the stream) was read
    output_tokens: int = 0
    prompt_tokens: int | None = None

    @property
    def ttft(self) -> float | None:
        return self.arrivals[0] - self.sent if self.ok else None

    @property
    def e2e(self) -> float | None:
        return self.end - self.sent if self.ok else None

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:])] if self.ok else []

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first: (E2E - TTFT) / (tokens - 1)."""
        if not self.ok or self.output_tokens < 2:
            return None
        return (self.end - self.arrivals[0]) / (self.output_tokens - 1)


def finish_reason(payload: dict) -> str | None:
    choices = payload.get("choices") or []
    return choices[0].get("finish_reason") if choices else None


def chunk_text(payload: dict, api: str) -> str | None:
    """The generated text a chunk carries (None for chunks that carry none: the chat role chunk, the usage chunk)."""
    choices = payload.get("choices") or []
    if not choices:
        return None
    if api == "chat":
        return (choices[0].get("delta") or {}).get("content") or None
    return choices[0].get("text") or None


async def stream_request(session: aiohttp.ClientSession, url: str, body: dict, api: str,
                         count_tokens: Callable[[str], int] | None = None) -> RequestResult:
    """One streamed request, timed. aiohttp, not httpx: on one core at 64 streams httpx took 10-16 ms from a chunk's
    send to its read and up to a second to start requests on kept-alive connections; aiohttp 0.2-0.5 ms."""
    result = RequestResult(ok=False, sent=time.perf_counter())
    texts, done, finished, usage = [], False, False, None
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                detail = (await response.text(errors="replace"))[:200]
                return failed(result, f"HTTP {response.status}: {' '.join(detail.split())}")
            kind = response.headers.get("Content-Type", "")
            if not kind.startswith("text/event-stream"):
                return failed(result, f"the server answered {kind or 'no content type'}, not an event stream")
            async for raw in response.content:          # one line of the stream as soon as it is read
                stamp = time.perf_counter()
                if not raw.startswith(b"data:"):
                    continue
                data = raw[len(b"data:"):].strip()
                if data == b"[DONE]":
                    done = True
                    result.end = stamp
                    break
                payload = json.loads(data)
                if "error" in payload:
                    return failed(result, f"error in the stream: {str(payload['error'])[:200]}")
                usage = payload.get("usage") or usage
                text = chunk_text(payload, api)
                if text is not None:
                    result.arrivals.append(stamp)
                    texts.append(text)
                if finish_reason(payload):
                    finished, result.end = True, stamp
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError, ValueError, OSError) as err:
        return failed(result, f"{type(err).__name__}: {err}")
    if not done and not finished:   # `transformers serve` ends with a finish_reason and no [DONE]
        return failed(result, f"the stream ended without [DONE] or a finish_reason after {len(result.arrivals)} "
                              f"tokens")
    if not result.arrivals:
        return failed(result, "no token came before the stream ended")
    result.ok = True
    if usage and usage.get("completion_tokens"):
        result.output_tokens = int(usage["completion_tokens"])
        result.prompt_tokens = usage.get("prompt_tokens")
    elif count_tokens is not None:
        result.output_tokens = count_tokens("".join(texts))
    else:
        result.output_tokens = len(result.arrivals)
    return result


def failed(result: RequestResult, error: str) -> RequestResult:
    result.ok, result.error = False, error
    return result


# -- levels -----------------------------------------------------------------------------------------------------
Send = Callable[[int], Awaitable[RequestResult]]   # request index -> its result


async def closed_loop(send: Send, concurrency: int, requests: int | None, duration: float | None,
                      done: Callable[[RequestResult], None] = lambda r: None) -> tuple[list[RequestResult], float]:
    """`concurrency` workers, each sending its next request as soon as its last one ended, until `requests` were
    sent or `duration` seconds passed. (results, seconds the level took)."""
    results: list[RequestResult] = []
    counter = iter(range(requests if requests is not None else 1 << 62))
    start = time.perf_counter()
    stop_at = start + duration if duration is not None else math.inf

    async def worker():
        for index in counter:
            if time.perf_counter() >= stop_at:
                return
            result = await send(index)
            results.append(result)
            done(result)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, time.perf_counter() - start


def arrival_gaps(rate: float, count: int, burstiness: float, seed: int) -> list[float]:
    """Seconds between request starts: gamma-distributed with mean 1/rate (shape `burstiness`; 1 = Poisson), all 0
    for an infinite rate (everything at once)."""
    if math.isinf(rate):
        return [0.0] * count
    draw = random.Random(seed)
    return [draw.gammavariate(burstiness, 1.0 / (rate * burstiness)) for _ in range(count)]


async def open_loop(send: Send, rate: float, requests: int | None, duration: float | None, burstiness: float,
                    seed: int, done: Callable[[RequestResult], None] = lambda r: None
                    ) -> tuple[list[RequestResult], float]:
    """Requests started at their arrival times whatever the server's state, until `requests` were started or
    `duration` seconds passed; the level ends when every started request has ended."""
    count = requests if requests is not None else max(1, math.ceil(rate * duration * 2) if not math.isinf(rate)
                                                      else 1)
    gaps = arrival_gaps(rate, count, burstiness, seed)
    start = time.perf_counter()
    tasks, due = [], start

    async def one(index):
        result = await send(index)
        done(result)
        return result

    for index, gap in enumerate(gaps):
        due += gap
        if duration is not None and due - start >= duration:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(index)))
    results = list(await asyncio.gather(*tasks))
    return results, time.perf_counter() - start


# -- statistics -------------------------------------------------------------------------------------------------
def percentiles(name: str, values_s: list[float]) -> dict:
    """{name_ms_p50, _p90, _p99, _mean} in milliseconds (None when there is no value)."""
    if not values_s:
        return {f"{name}_ms_{s}": None for s in [f"p{p}" for p in PERCENTILES] + ["mean"]}
    ms = np.asarray(values_s) * 1000
    out = {f"{name}_ms_p{p}": float(np.percentile(ms, p)) for p in PERCENTILES}
    out[f"{name}_ms_mean"] = float(ms.mean())
    return out


def meets_slo(result: RequestResult, slo: dict[str, float]) -> bool:
    """Every SLO (milliseconds; keys ttft, tpot, itl, e2e) met by this request (ITL: its worst gap)."""
    if not result.ok:
        return False
    values = {"ttft": result.ttft, "tpot": result.tpot, "e2e": result.e2e,
              "itl": max(result.itls) if result.itls else None}
    return all(values[k] is None or values[k] * 1000 <= limit for k, limit in slo.items())


def level_summary(results: list[RequestResult], seconds: float, slo: dict[str, float]) -> dict:
    ok = [r for r in results if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    row = {"requests": len(results), "requests_ok": len(ok), "requests_failed": len(results) - len(ok),
           "duration_s": seconds, "request_throughput": len(ok) / seconds if seconds > 0 else None,
           "output_throughput": tokens / seconds if seconds > 0 else None, "output_tokens": tokens}
    row.update(percentiles("ttft", [r.ttft for r in ok]))
    row.update(percentiles("itl", [gap for r in ok for gap in r.itls]))
    row.update(percentiles("tpot", [r.tpot for r in ok if r.tpot is not None]))
    row.update(percentiles("e2e", [r.e2e for r in ok]))
    if slo:
        good = sum(meets_slo(r, slo) for r in results)
        row.update(goodput=good / seconds if seconds > 0 else None,
                   slo_attainment=good / len(results) if results else None)
    errors = sorted({r.error for r in results if r.error})
    row["first_error"] = errors[0] if errors else None
    return row


def saturated(previous: list[dict], current: dict) -> bool:
    """The endpoint saturated at `current`: its throughput grew less than 10% over the best level before it while its
    median E2E latency grew 1.5x over the level just before."""
    if not previous or current["output_throughput"] is None or current["e2e_ms_p50"] is None:
        return False
    best = max((p["output_throughput"] or 0.0) for p in previous)
    last = previous[-1]["e2e_ms_p50"]
    return (current["output_throughput"] < SATURATION_GROWTH * best and last is not None
            and current["e2e_ms_p50"] >= SATURATION_LATENCY * last)
