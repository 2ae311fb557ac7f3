"""The batching engine over a scripted runner: each row's next token is prompt[0] + step, so what a request gets,
when it stops and which requests shared a batch are known exactly."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import torch

from granite_bench.serve.engine import BatchingEngine, GenerationRequest, PromptDone, RequestError, TokenEvent

VOCAB = 64
EOS = 2


class CountingRunner:
    """Row b's token at step s is (prompt_b[0] + s) % VOCAB; records every batch it is given."""

    def __init__(self, batch_size: int = 4, fail: bool = False):
        self.neuron_config = SimpleNamespace(batch_size=batch_size, sequence_length=32, context_encoding_buckets=[16])
        self.batches, self.fail, self.first = [], fail, None

    def context_encode(self, prompts):
        if self.fail:
            raise RuntimeError("device lost")
        self.batches.append([p[0] for p in prompts])
        self.first = torch.tensor([p[0] for p in prompts])
        logits = torch.zeros(len(prompts), max(len(p) for p in prompts), VOCAB)         # [B, L, V]
        for b, p in enumerate(prompts):
            logits[b, :len(p), p[0] % VOCAB] = 5.0                                      # every position
        return logits

    def token_generate(self, next_ids, positions):
        logits = torch.zeros(len(next_ids), VOCAB)                                       # [B, V]
        logits[torch.arange(len(next_ids)), (next_ids + 1) % VOCAB] = 5.0
        return logits


async def collect(engine: BatchingEngine, requests: list[GenerationRequest]) -> list[list]:
    for request in requests:
        await engine.submit(request)

    async def events(request):
        out = []
        while True:
            event = await request.events.get()
            out.append(event)
            if isinstance(event, Exception) or (isinstance(event, TokenEvent) and event.finish_reason):
                return out
    try:
        return await asyncio.gather(*(events(r) for r in requests))
    finally:
        await engine.stop()


def tokens(events) -> list[int]:
    return [e.token for e in events if isinstance(e, TokenEvent)]


def run(runner, requests, gather_ms: float = 50.0):
    async def main():
        return await collect(BatchingEngine(runner, gather_ms), requests)
    return asyncio.run(main())


def test_requests_sent_together_share_batches_of_the_runners_batch_size():
    runner = CountingRunner(batch_size=4)
    out = run(runner, [GenerationRequest([10 + i], max_tokens=3) for i in range(6)])
    assert sorted(len(b) for b in runner.batches) == [2, 4]
    assert [tokens(o) for o in out] == [[10 + i, 11 + i, 12 + i] for i in range(6)]
    assert all(isinstance(o[0], PromptDone) for o in out) and [o[-1].finish_reason for o in out] == ["length"] * 6


def test_a_stop_token_ends_its_request_unless_min_tokens_are_still_due():
    """EOS comes as the 2nd token: it stops a request with min_tokens <= 2; with 3 it is kept and generation goes on
    (unlike vLLM, which masks the stop token until min_tokens: greedy only ever emits the argmax here)."""
    stop = frozenset({EOS})
    out = run(CountingRunner(), [GenerationRequest([EOS - 1], max_tokens=5, stop_ids=stop),
                                 GenerationRequest([EOS - 1], max_tokens=5, stop_ids=stop, min_tokens=2),
                                 GenerationRequest([EOS - 1], max_tokens=5, stop_ids=stop, min_tokens=3),
                                 GenerationRequest([EOS - 1], max_tokens=5)])
    assert [tokens(o) for o in out] == [[1, 2], [1, 2], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5]]
    assert [o[-1].finish_reason for o in out] == ["stop", "stop", "length", "length"]


def test_a_runner_failure_reaches_every_request_of_its_batch():
    out = run(CountingRunner(fail=True), [GenerationRequest([5], max_tokens=2), GenerationRequest([6], max_tokens=2)])
    assert all(isinstance(o[-1], RuntimeError) and "device lost" in str(o[-1]) for o in out)


def test_prompt_logprobs_and_logprobs_come_from_the_runners_logits():
    request = GenerationRequest([7, 7, 9], max_tokens=2, logprobs=2, prompt_logprobs=1)
    (out,) = run(CountingRunner(), [request])
    prompt = out[0].prompt_logprobs
    assert prompt[0] is None and len(prompt) == 3
    assert prompt[1].token == 7 and prompt[1].rank == 1 and prompt[1].top[0][0] == 7   # the logit at 7 is the max
    assert prompt[2].token == 9 and prompt[2].rank == 2                                  # only 7 is above it
    first = out[1].logprobs
    assert first.token == 7 and first.rank == 1 and len(first.top) == 2
    expected = float(torch.log_softmax(torch.tensor([5.0] + [0.0] * (VOCAB - 1)), -1)[0])
    assert first.logprob == pytest.approx(expected)


@pytest.mark.parametrize("request_, says", [
    (GenerationRequest([], max_tokens=1), "empty"),
    (GenerationRequest([1] * 17, max_tokens=1), "largest context bucket"),
    (GenerationRequest([1] * 16, max_tokens=17), "sequence length"),
    (GenerationRequest([1], max_tokens=1, logprobs=21), "logprobs"),
])
def test_requests_the_static_shapes_cannot_hold_are_refused(request_, says):
    with pytest.raises(RequestError, match=says):
        BatchingEngine(CountingRunner()).check(request_)
