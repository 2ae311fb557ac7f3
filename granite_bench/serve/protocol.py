"""The OpenAI-compatible API subset `granite-bench serve` speaks, with vLLM's extensions where parity needs them:
request models (pydantic) and the response bodies, shaped as vLLM shapes them.

Completions: a prompt as text or token ids; `logprobs=K` gives per generated token `tokens`, `token_logprobs`,
`top_logprobs` ({token: logprob}) and `text_offset`; `prompt_logprobs=K` gives a list with None for position 0, then
{token_id: {logprob, rank, decoded_token}} holding the prompt's own token and the top K; `return_tokens_as_token_ids`
writes tokens as "token_id:N". Chat: messages in, `logprobs`/`top_logprobs` as OpenAI's chat shape. Unknown fields are
accepted and ignored, as vLLM does by default; a temperature other than 0, n > 1 and stop strings are refused (greedy
only). `ignore_eos` is honoured; `min_tokens` only delays the stop (the stop token is still emitted, where vLLM masks it
until min_tokens are out).
"""

from __future__ import annotations

import time
import uuid

from pydantic import BaseModel, ConfigDict

from .engine import GenerationRequest, RequestError, TokenEvent, TopLogprobs


class StreamOptions(BaseModel):
    include_usage: bool = False


class GenerationFields(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    stop: str | list[str] | None = None

    def check_greedy(self) -> None:
        if self.temperature not in (None, 0, 0.0):
            raise RequestError(f"this server decodes greedily only: send temperature 0 (got {self.temperature})")
        if self.n != 1:
            raise RequestError(f"this server returns one choice per request: send n 1 (got {self.n})")
        if self.stop:
            raise RequestError("stop strings are not supported by this server: stop on token count (max_tokens)")


class CompletionRequest(GenerationFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    return_tokens_as_token_ids: bool = False
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str


class ChatRequest(GenerationFields):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


DEFAULT_MAX_TOKENS = 16


def completion_generation(body: CompletionRequest, codec) -> GenerationRequest:
    body.check_greedy()
    if body.echo:
        raise RequestError("echo is not supported by this server: ask for prompt_logprobs instead")
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (list, str)):
        if len(prompt) != 1:
            raise RequestError(f"send one prompt per request (got a list of {len(prompt)})")
        prompt = prompt[0]
    ids = codec.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
    if any(not 0 <= t < codec.vocab_size for t in ids):
        raise RequestError(f"prompt token ids must lie in [0, {codec.vocab_size})")
    return GenerationRequest(prompt=ids, max_tokens=body.max_tokens or DEFAULT_MAX_TOKENS,
                             stop_ids=frozenset() if body.ignore_eos else codec.eos_ids, min_tokens=body.min_tokens,
                             logprobs=body.logprobs, prompt_logprobs=body.prompt_logprobs)


def chat_generation(body: ChatRequest, codec) -> GenerationRequest:
    body.check_greedy()
    if body.logprobs and body.top_logprobs is None:
        body.top_logprobs = 0
    return GenerationRequest(prompt=codec.chat_prompt([m.model_dump() for m in body.messages]),
                             max_tokens=body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS,
                             stop_ids=frozenset() if body.ignore_eos else codec.eos_ids, min_tokens=body.min_tokens,
                             logprobs=body.top_logprobs if body.logprobs else None)


# -- responses --------------------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def token_name(token: int, codec, as_ids: bool) -> str:
    return f"token_id:{token}" if as_ids else codec.piece(token)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def prompt_logprobs_body(prompt_lp: list[TopLogprobs | None] | None, codec, as_ids: bool):
    if prompt_lp is None:
        return None
    out = []
    for entry in prompt_lp:
        if entry is None:
            out.append(None)
            continue
        ranked = {entry.token: (entry.logprob, entry.rank)}
        ranked.update({t: (lp, rank) for rank, (t, lp) in enumerate(entry.top, start=1) if t not in ranked})
        out.append({str(t): {"logprob": lp, "rank": rank, "decoded_token": token_name(t, codec, as_ids)}
                    for t, (lp, rank) in ranked.items()})
    return out


def completion_logprobs_body(events: list[TokenEvent], codec, as_ids: bool, text_offset: int = 0):
    """vLLM's completions `logprobs` object for these tokens (None when they carry no log-probabilities)."""
    if not events or events[0].logprobs is None:
        return None
    body = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
    for event in events:
        lp = event.logprobs
        name = token_name(event.token, codec, as_ids)
        body["text_offset"].append(text_offset)
        text_offset += len(codec.piece(event.token))
        body["tokens"].append(name)
        body["token_logprobs"].append(lp.logprob)
        top = {token_name(t, codec, as_ids): v for t, v in lp.top}
        top.setdefault(name, lp.logprob)
        body["top_logprobs"].append(top)
    return body


def completion_choice(events: list[TokenEvent], codec, body: CompletionRequest, prompt_lp=None, offset: int = 0,
                      final: bool = True) -> dict:
    choice = {"index": 0, "text": "".join(codec.piece(e.token) for e in events),
              "logprobs": completion_logprobs_body(events, codec, body.return_tokens_as_token_ids, offset),
              "finish_reason": events[-1].finish_reason if events and final else None, "stop_reason": None}
    if body.prompt_logprobs is not None:
        choice["prompt_logprobs"] = prompt_logprobs_body(prompt_lp, codec, body.return_tokens_as_token_ids)
    return choice


def completion_body(request_id: str, model: str, choices: list[dict], usage_body: dict | None,
                    created: int | None = None) -> dict:
    return {"id": request_id, "object": "text_completion", "created": created or int(time.time()), "model": model,
            "choices": choices, "usage": usage_body}


def chat_logprobs_body(events: list[TokenEvent], codec):
    if not events or events[0].logprobs is None:
        return None
    content = []
    for event in events:
        lp = event.logprobs
        piece = codec.piece(event.token)
        content.append({"token": piece, "logprob": lp.logprob, "bytes": list(piece.encode()),
                        "top_logprobs": [{"token": codec.piece(t), "logprob": v, "bytes": list(codec.piece(t).encode())}
                                         for t, v in lp.top]})
    return {"content": content}


def chat_body(request_id: str, model: str, events: list[TokenEvent], codec, prompt_tokens: int) -> dict:
    message = {"role": "assistant", "content": "".join(codec.piece(e.token) for e in events)}
    return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": chat_logprobs_body(events, codec),
                         "finish_reason": events[-1].finish_reason if events else None}],
            "usage": usage(prompt_tokens, len(events))}


def chat_chunk(request_id: str, model: str, created: int, delta: dict, finish_reason=None, logprobs=None) -> dict:
    return {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}


def error_body(message: str, code: int = 400) -> dict:
    kind = "BadRequestError" if code == 400 else "InternalServerError"
    return {"object": "error", "message": message, "type": kind, "param": None, "code": code}

