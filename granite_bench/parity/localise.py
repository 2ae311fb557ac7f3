"""Where parity starts to fail: the first layer, and within it attention or MLP, whose residual-stream output
leaves tolerance at the first failing position."""

from __future__ import annotations

import torch


def sub_block_errors(expected: list, actual: list) -> list[dict]:
    """expected/actual: [(layer, sub, Tensor[H])] in execution order -> rows of relative error per sub-block."""
    rows = []
    for (layer, sub, e), (layer_a, sub_a, a) in zip(expected, actual):
        if (layer, sub) != (layer_a, sub_a):
            raise ValueError(f"hidden states out of order: {(layer, sub)} vs {(layer_a, sub_a)}")
        e, a = e.float(), a.float()
        scale = e.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
        rows.append({"layer": layer, "sub_block": sub,
                     "max_abs_err": float((a - e).abs().max()),
                     "rel_err": float((a - e).abs().max() / scale)})
    return rows


PER_HEAD = "attention_heads"   # each head's attention output (o_proj's input): shown, not a residual stream


def stream_at(streams: list, layer: int, sub: str):
    """One position's [(layer, sub-block, Tensor)] -> the tensor of (layer, sub), or None."""
    return next((tensor for l, s, tensor in streams if l == layer and s == sub), None)


def first_failing_block(rows: list[dict], rtol: float) -> dict | None:
    """The first sub-block (execution order) whose relative error exceeds rtol, or None (per-head outputs are
    read by `sink_scaled_heads`, not named here)."""
    for row in rows:
        if row["sub_block"] != PER_HEAD and not row["rel_err"] <= rtol:  # nan counts as failing
            return row
    return None


def sink_scaled_heads(expected: list, actual: list, layer: int, heads: int, rtol: float) -> bool:
    """Whether a layer's attention error is one scale factor per head: every head's output [d] is the reference's
    times its own factor (what a sink changes: out = softmax(s)·V·sigmoid(lse - sink)) to within rtol, while it is
    not equal to it within rtol. expected/actual: one position's [(layer, sub-block, Tensor)]; False when the layer
    has no per-head outputs."""
    e, a = stream_at(expected, layer, PER_HEAD), stream_at(actual, layer, PER_HEAD)
    if e is None or a is None:
        return False
    e, a = e.float().view(heads, -1), a.float().view(heads, -1)                 # [Hq, d]
    tiny = torch.finfo(torch.float32).tiny
    scale = (a * e).sum(-1, keepdim=True) / (e * e).sum(-1, keepdim=True).clamp_min(tiny)   # least squares, per head
    norm = e.abs().max().clamp_min(tiny)
    plain, rescaled = float((a - e).abs().max() / norm), float((a - scale * e).abs().max() / norm)
    return plain > rtol and rescaled <= rtol and rescaled < plain / 10
