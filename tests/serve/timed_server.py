"""A stand-in endpoint with known timing, for measuring the load generator: each completion streams `max_tokens`
chunks, the first TTFT_S after the request arrived and each next one ITL_S after the one before, on absolute
deadlines (no drift accumulates). Run as its own process: `python -m uvicorn timed_server:app --app-dir tests/serve`.
TTFT_S and ITL_S come from the environment (TIMED_TTFT_MS, TIMED_ITL_MS)."""

from __future__ import annotations

import asyncio
import json
import os
import time

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from fastapi.sse import format_sse_event

TTFT_S = float(os.environ.get("TIMED_TTFT_MS", "50")) / 1000
ITL_S = float(os.environ.get("TIMED_ITL_MS", "20")) / 1000

app = FastAPI()


@app.get("/v1/models")
async def models():
    return {"object": "list", "data": [{"id": "timed", "object": "model"}]}


@app.post("/v1/completions")
async def completions(request: Request):
    arrived = time.perf_counter()
    body = await request.json()
    count = int(body.get("max_tokens", 16))

    async def stream():
        loop_start = arrived
        for k in range(count):
            delay = loop_start + TTFT_S + k * ITL_S - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            chunk = {"object": "text_completion", "choices": [{"index": 0, "text": f" t{k}", "finish_reason": None}],
                     "arrived": arrived, "sent": time.perf_counter()}   # CLOCK_MONOTONIC: comparable across processes
            yield format_sse_event(data_str=json.dumps(chunk))
        usage = {"prompt_tokens": 1, "completion_tokens": count, "total_tokens": count + 1}
        yield format_sse_event(data_str=json.dumps({"object": "text_completion", "choices": [], "usage": usage}))
        yield format_sse_event(data_str="[DONE]")

    return StreamingResponse(stream(), media_type="text/event-stream")

