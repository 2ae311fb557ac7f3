"""The ASGI app of `granite-bench serve` (FastAPI): /v1/completions, /v1/chat/completions, /v1/models, /health.

Streaming answers are Server-Sent Events framed by FastAPI's own SSE encoder, one event per generated token, then
`data: [DONE]`; with `stream_options.include_usage` a last chunk carries the usage, as vLLM sends it."""

from __future__ import annotations

import contextlib
import json
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.sse import format_sse_event

from . import protocol
from .engine import BatchingEngine, GenerationRequest, PromptDone, RequestError, TokenEvent


def sse(payload) -> bytes:
    return format_sse_event(data_str=payload if isinstance(payload, str) else json.dumps(payload))


async def events_of(request: GenerationRequest):
    """The request's PromptDone, then its TokenEvents up to the finishing one; a runner error is raised."""
    while True:
        event = await request.events.get()
        if isinstance(event, Exception):
            raise event
        yield event
        if isinstance(event, TokenEvent) and event.finish_reason is not None:
            return


def create_app(engine: BatchingEngine, codec, model_name: str) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_):
        yield
        await engine.stop()

    app = FastAPI(title="granite-bench serve", docs_url=None, redoc_url=None, lifespan=lifespan)
    created = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def invalid(_, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": str(err)}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse(protocol.error_body(f"{where}: {first.get('msg')}" if where else str(first.get("msg"))),
                            status_code=400)

    @app.exception_handler(RequestError)
    async def refused(_, err: RequestError):
        return JSONResponse(protocol.error_body(str(err)), status_code=400)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "granite-bench", "root": str(engine.runner.model_dir),
                                            "max_model_len": engine.sequence_length}]}

    def check_model(name: str | None) -> None:
        if name not in (None, model_name):
            raise RequestError(f"model {name!r} is not served here: this server serves {model_name!r}")

    @app.post("/v1/completions")
    async def completions(body: protocol.CompletionRequest, http: Request):
        check_model(body.model)
        request = await engine.submit(protocol.completion_generation(body, codec))
        if body.stream:
            return StreamingResponse(completion_stream(request, body, http), media_type="text/event-stream")
        prompt_lp, events = None, []
        async for event in events_of(request):
            if isinstance(event, PromptDone):
                prompt_lp = event.prompt_logprobs
            else:
                events.append(event)
        choice = protocol.completion_choice(events, codec, body, prompt_lp)
        return protocol.completion_body(protocol.new_id("cmpl"), model_name, [choice],
                                        protocol.usage(len(request.prompt), len(events)))

    async def completion_stream(request: GenerationRequest, body, http: Request):
        request_id, stamp, offset, count, prompt_lp = protocol.new_id("cmpl"), int(time.time()), 0, 0, None
        try:
            async for event in events_of(request):
                if isinstance(event, PromptDone):
                    prompt_lp = event.prompt_logprobs
                    continue
                choice = protocol.completion_choice([event], codec, body, prompt_lp if count == 0 else None, offset)
                if count and "prompt_logprobs" in choice:
                    del choice["prompt_logprobs"]
                count += 1
                offset += len(choice["text"])
                yield sse(protocol.completion_body(request_id, model_name, [choice], None, stamp))
            if body.stream_options is not None and body.stream_options.include_usage:
                yield sse(protocol.completion_body(request_id, model_name, [], protocol.usage(len(request.prompt),
                                                                                              count), stamp))
            yield sse("[DONE]")
        except Exception as err:  # the runner failed: said in the stream, which then ends without [DONE]
            yield stream_error(err)
        finally:
            request.cancelled = True  # a client that went away stops being sent to (its row finishes unseen)

    @app.post("/v1/chat/completions")
    async def chat(body: protocol.ChatRequest):
        check_model(body.model)
        request = await engine.submit(protocol.chat_generation(body, codec))
        request_id = protocol.new_id("chatcmpl")
        if body.stream:
            return StreamingResponse(chat_stream(request, body, request_id), media_type="text/event-stream")
        events = [e async for e in events_of(request) if isinstance(e, TokenEvent)]
        return protocol.chat_body(request_id, model_name, events, codec, len(request.prompt))

    async def chat_stream(request: GenerationRequest, body, request_id: str):
        stamp, count = int(time.time()), 0
        try:
            yield sse(protocol.chat_chunk(request_id, model_name, stamp, {"role": "assistant", "content": ""}))
            async for event in events_of(request):
                if isinstance(event, PromptDone):
                    continue
                count += 1
                yield sse(protocol.chat_chunk(request_id, model_name, stamp, {"content": codec.piece(event.token)},
                                              event.finish_reason, protocol.chat_logprobs_body([event], codec)))
            if body.stream_options is not None and body.stream_options.include_usage:
                chunk = protocol.chat_chunk(request_id, model_name, stamp, {})
                chunk.update(choices=[], usage=protocol.usage(len(request.prompt), count))
                yield sse(chunk)
            yield sse("[DONE]")
        except Exception as err:  # the runner failed: said in the stream, which then ends without [DONE]
            yield stream_error(err)
        finally:
            request.cancelled = True

    return app


def stream_error(err: Exception) -> bytes:
    """What a stream carries when the runner fails mid-way (vLLM sends an error object in the stream too)."""
    return sse({"error": protocol.error_body(f"{type(err).__name__}: {err}", 500)})
