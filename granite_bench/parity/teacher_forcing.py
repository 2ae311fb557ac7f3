"""Drive the implementation through its decode path with the reference's tokens.

The reference generates N greedy tokens per prompt; the implementation encodes the prompts (context-encoding graph)
and is then fed the reference's tokens one per step through the token-generation graph. Every position after the
prompt therefore checks the decode path and the KV cache, including positions past a greedy divergence (which
NxDI's re-prefill approach never checks).
"""

from __future__ import annotations

import torch


def teacher_forced_logits(runner, prompts: list[list[int]], forced: list[list[int]]) -> list[torch.Tensor]:
    """Per prompt: logits [len(prompt) + len(forced), V] for the positions of prompt + forced tokens."""
    lengths = torch.tensor([len(p) for p in prompts])
    cte = runner.context_encode(prompts)  # [B, Lmax, V]
    steps = len(forced[0])
    per_step = []
    for j in range(steps):
        next_ids = torch.tensor([row[j] for row in forced])
        per_step.append(runner.token_generate(next_ids, lengths + j))  # [B, V]
    out = []
    for b, length in enumerate(lengths.tolist()):
        decode = torch.stack([s[b] for s in per_step]) if per_step else cte.new_zeros(0, cte.shape[-1])
        out.append(torch.cat([cte[b, :length], decode]))
    return out


def hidden_states_at(runner, prompts: list[list[int]], forced: list[list[int]], row: int, position: int):
    """The implementation's per-layer residual stream of `row` at `position` (same teacher-forced inputs):
    [(layer, sub, Tensor[H])]."""
    lengths = torch.tensor([len(p) for p in prompts])
    prompt_len = int(lengths[row])
    if position < prompt_len:
        _, captured = runner.context_encode(prompts, capture_hidden=True, capture_position=position)
        return [(layer, sub, hidden[row, 0]) for layer, sub, hidden in captured]
    runner.context_encode(prompts)
    step = position - prompt_len
    for j in range(step + 1):
        next_ids = torch.tensor([r[j] for r in forced])
        if j == step:
            _, captured = runner.token_generate(next_ids, lengths + j, capture_hidden=True)
            return [(layer, sub, hidden[row, 0]) for layer, sub, hidden in captured]
        runner.token_generate(next_ids, lengths + j)
    raise AssertionError("unreachable")
