"""Static batching of concurrent requests over one runner.

Requests wait in an asyncio queue; the batch loop takes the first one, gathers more for `gather_ms` (up to the
runner's compiled batch size), then runs the batch to its end through the runner contract: one context encoding,
then one token-generation call per step, each in a worker thread so the event loop keeps accepting requests and
streaming tokens. Each step's token (and its top-K log-probabilities when asked) goes to the request's own queue at
once. A batch runs until its longest request is done; requests that arrive meanwhile wait for the next batch (static
batching, as a Neuron graph of fixed batch size serves; not continuous batching).

Greedy only: the server samples nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import torch

from ..runtime.generation import last_position_logits

MAX_LOGPROBS = 20  # vLLM's default max_logprobs


class RequestError(ValueError):
    """A request the server cannot serve (told to the client as HTTP 400)."""


@dataclass
class TopLogprobs:
    token: int                         # the token chosen (generated) or given (prompt)
    logprob: float                     # its log-probability
    rank: int                          # 1 + how many tokens have a higher log-probability
    top: list[tuple[int, float]]       # the K most likely (token, logprob), most likely first


@dataclass
class GenerationRequest:
    prompt: list[int]
    max_tokens: int
    stop_ids: frozenset[int] = frozenset()
    min_tokens: int = 0
    logprobs: int | None = None        # top-K per generated token
    prompt_logprobs: int | None = None # top-K per prompt position (position 0 has none)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False            # the client went away: its row runs on (static shapes), nothing is sent


@dataclass
class PromptDone:
    """First event of a request: its prompt's log-probabilities (None when not asked for)."""
    prompt_logprobs: list[TopLogprobs | None] | None


@dataclass
class TokenEvent:
    token: int
    logprobs: TopLogprobs | None
    finish_reason: str | None          # "stop" / "length" on the last token, else None


def top_logprobs(logits: torch.Tensor, chosen: torch.Tensor, k: int) -> list[TopLogprobs]:
    """Per row of logits [N, V] (float32): the chosen token's log-probability and rank, and the top-k."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)                       # [N, V]
    chosen_lp = logprobs.gather(-1, chosen[:, None])                           # [N, 1]
    ranks = (logprobs > chosen_lp).sum(-1) + 1                                 # [N]
    values, ids = logprobs.topk(k, dim=-1) if k > 0 else (logprobs[:, :0], chosen[:, None][:, :0])
    return [TopLogprobs(int(t), float(lp), int(r), list(zip(i, v)))
            for t, lp, r, i, v in zip(chosen.tolist(), chosen_lp[:, 0].tolist(), ranks.tolist(), ids.tolist(),
                                      values.tolist())]


def prompt_logprobs_of(logits: torch.Tensor, prompt: list[int], k: int) -> list[TopLogprobs | None]:
    """vLLM's prompt_logprobs: None for position 0, then for each later prompt token its log-probability given the
    tokens before it (logits [L, V] of the context encoding) and the top-k there."""
    if len(prompt) < 2:
        return [None]
    return [None] + top_logprobs(logits[:len(prompt) - 1], torch.tensor(prompt[1:]), k)


class BatchingEngine:
    """Gathers requests into batches of the runner's compiled batch size and runs them greedily."""

    def __init__(self, runner, gather_ms: float = 5.0):
        self.runner = runner
        self.batch_size = runner.neuron_config.batch_size
        self.sequence_length = runner.neuron_config.sequence_length
        self.largest_prompt = runner.neuron_config.context_encoding_buckets[-1]
        self.gather_s = gather_ms / 1000
        self.queue: asyncio.Queue[GenerationRequest] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def check(self, request: GenerationRequest) -> None:
        """RequestError (one line) for a request the static shapes cannot hold."""
        if not request.prompt:
            raise RequestError("the prompt is empty: send at least one token")
        if request.max_tokens < 1:
            raise RequestError(f"max_tokens must be at least 1, got {request.max_tokens}")
        if len(request.prompt) > self.largest_prompt:
            raise RequestError(f"the prompt has {len(request.prompt)} tokens, more than the largest context bucket "
                               f"({self.largest_prompt}) this server was started with")
        if len(request.prompt) + request.max_tokens > self.sequence_length:
            raise RequestError(f"prompt ({len(request.prompt)} tokens) + max_tokens ({request.max_tokens}) exceeds "
                               f"the server's sequence length {self.sequence_length}")
        for name, k in (("logprobs", request.logprobs), ("prompt_logprobs", request.prompt_logprobs)):
            if k is not None and not 0 <= k <= MAX_LOGPROBS:
                raise RequestError(f"{name} must lie in [0, {MAX_LOGPROBS}], got {k}")

    async def submit(self, request: GenerationRequest) -> GenerationRequest:
        self.check(request)
        self.start()
        await self.queue.put(request)
        return request

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._batch_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _gather(self) -> list[GenerationRequest]:
        batch = [await self.queue.get()]
        deadline = asyncio.get_running_loop().time() + self.gather_s
        while len(batch) < self.batch_size:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                batch.append(self.queue.get_nowait() if remaining <= 0 else
                             await asyncio.wait_for(self.queue.get(), remaining))
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
        return [r for r in batch if not r.cancelled]

    async def _batch_loop(self) -> None:
        while True:
            batch = await self._gather()
            if not batch:
                continue
            try:
                await self._run_batch(batch)
            except Exception as err:  # the runner failed: every request of the batch is told, the server lives on
                for request in batch:
                    request.events.put_nowait(err)

    async def _run_batch(self, batch: list[GenerationRequest]) -> None:
        (next_ids, lengths, outputs), prompt_lps = await asyncio.to_thread(self._encode, batch)
        for request, prompt_lp in zip(batch, prompt_lps):
            request.events.put_nowait(PromptDone(prompt_lp))
        done = [False] * len(batch)
        for index in range(max(r.max_tokens for r in batch)):
            if index > 0:
                next_ids, lengths, outputs = await asyncio.to_thread(self._generate_step, batch, next_ids, lengths,
                                                                     index)
            for row, request in enumerate(batch):
                if not done[row]:
                    done[row] = self._emit(request, index, int(next_ids[row]), outputs[row])
            if all(done):
                break
            await asyncio.sleep(0)   # the streams send this step's tokens before the next step starts

    @staticmethod
    def _emit(request: GenerationRequest, index: int, token: int, logprobs: TopLogprobs | None) -> bool:
        """Send step `index`'s token to its request; True when the request is done (or gone)."""
        finish = None
        if index + 1 >= request.max_tokens:
            finish = "length"
        elif token in request.stop_ids and index + 1 >= request.min_tokens:
            finish = "stop"
        if not request.cancelled:
            request.events.put_nowait(TokenEvent(token, logprobs, finish))
        return finish is not None or request.cancelled

    # -- in the worker thread (nothing here touches an asyncio object) ----------------------------------------
    def _encode(self, batch: list[GenerationRequest]):
        prompts = [r.prompt for r in batch]
        lengths = torch.tensor([len(p) for p in prompts])
        logits = self.runner.context_encode(prompts)                            # [B, L, V] (or [B, 1, V])
        prompt_lps = []
        for row, request in enumerate(batch):
            wanted = request.prompt_logprobs
            if wanted is not None and logits.shape[1] == 1 and len(request.prompt) > 1:
                raise RequestError("prompt_logprobs needs a runner built with output_logits")
            prompt_lps.append(prompt_logprobs_of(logits[row], request.prompt, wanted) if wanted is not None else None)
        # [B, V]: each row's last prompt position chooses its first token
        return self._step_result(batch, last_position_logits(logits, lengths), lengths), prompt_lps

    def _generate_step(self, batch: list[GenerationRequest], next_ids: torch.Tensor, lengths: torch.Tensor,
                       index: int):
        logits = self.runner.token_generate(next_ids, lengths + index - 1)     # [B, V]
        return self._step_result(batch, logits, lengths)

    def _step_result(self, batch: list[GenerationRequest], logits: torch.Tensor, lengths: torch.Tensor):
        """(next token ids [B], prompt lengths [B], per row TopLogprobs or None) of one step's logits [B, V]."""
        next_ids = logits.argmax(-1)                                            # [B]
        wanted = max((r.logprobs for r in batch if r.logprobs is not None), default=None)
        outputs: list[TopLogprobs | None] = [None] * len(batch)
        if wanted is not None:
            rows = top_logprobs(logits, next_ids, wanted)
            outputs = [TopLogprobs(o.token, o.logprob, o.rank, o.top[:r.logprobs]) if r.logprobs is not None
                       else None for o, r in zip(rows, batch)]
        return next_ids, lengths, outputs
