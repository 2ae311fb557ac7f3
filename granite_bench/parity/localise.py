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


def first_failing_block(rows: list[dict], rtol: float) -> dict | None:
    """The first sub-block (execution order) whose relative error exceeds rtol, or None."""
    for row in rows:
        if not row["rel_err"] <= rtol:  # nan counts as failing
            return row
    return None
