"""The one greedy generation loop every command uses (parity, perf, eval), over any runner's two static entry
points: context encoding once, then one token-generation call per new token, stopping early when every row has
produced a stop token (EOS or a caller's stop ids)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from .errors import InputError


@dataclass
class GenerationResult:
    tokens: list[list[int]]          # new tokens per row, up to and including its first stop token
    logits: torch.Tensor             # [B, N, V] float32: the logits that chose each new token (N: steps run)
    timings: dict = field(default_factory=dict)  # ttft_ns, step_ns [N - 1], e2e_ns


def last_position_logits(logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, V]: each row's last real position. Context encoding returns [B, L, V] with output_logits on and
    [B, 1, V] (the last real position already picked by the graph) with it off."""
    if logits.shape[1] == 1:
        return logits[:, 0]
    return logits[torch.arange(len(lengths)), lengths - 1]


def trim_at_stop(row: list[int], stop_ids: frozenset[int]) -> list[int]:
    for i, token in enumerate(row):
        if token in stop_ids:
            return row[: i + 1]
    return row


@torch.no_grad()
def greedy_generate(runner, prompts: list[list[int]], max_new_tokens: int, stop_token_ids: Iterable[int] = (),
                    clock: Callable[[], int] = time.perf_counter_ns) -> GenerationResult:
    """Greedy decode of up to `max_new_tokens` per row; stops once every row has emitted one of `stop_token_ids`
    (with none given it runs exactly `max_new_tokens` steps, as perf needs). `clock` returns nanoseconds after
    whatever device synchronisation the caller wants inside each interval."""
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    lengths = torch.tensor([len(p) for p in prompts])
    limit = runner.neuron_config.sequence_length
    if int(lengths.max()) + max_new_tokens > limit:
        raise InputError(f"prompt of {int(lengths.max())} + {max_new_tokens} new tokens exceeds sequence_length "
                         f"{limit}: raise --seq-len or lower --num-tokens")
    stop_ids = frozenset(int(t) for t in stop_token_ids)
    start = clock()
    step_logits = [last_position_logits(runner.context_encode(prompts), lengths)]   # [B, V]
    next_ids = step_logits[-1].argmax(-1)                                            # [B]
    done = torch.tensor([int(t) in stop_ids for t in next_ids])
    first = before = clock()
    steps = []
    for step in range(1, max_new_tokens):
        if bool(done.all()):
            break
        step_logits.append(runner.token_generate(next_ids, lengths + step - 1))    # [B, V]
        next_ids = step_logits[-1].argmax(-1)
        done |= torch.tensor([int(t) in stop_ids for t in next_ids])
        after = clock()
        steps.append(after - before)
        before = after
    logits = torch.stack(step_logits, dim=1)                                         # [B, N, V]
    tokens = [trim_at_stop(row, stop_ids) for row in logits.argmax(-1).tolist()]
    return GenerationResult(tokens, logits, {"ttft_ns": first - start, "step_ns": steps, "e2e_ns": before - start})
