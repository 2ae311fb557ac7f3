"""Routing near-ties: a MoE position that leaves tolerance only because its router chose another set of experts
where the reference's own router logits are within the measured error of a tie.

A router keeps the top k of its logits, a discrete choice. In a reduced dtype the logits move by a small error; where
the reference's k-th and (k+1)-th logits are closer than that error can close, the choice may flip, and the position's
output then changes by a whole expert's share: far beyond any continuous tolerance, and as legitimate as HF's own
bf16 model flipping there. The test is exact: if every logit moved by at most d (the largest |ours - reference| at
that position and layer, itself within the localisation tolerance, or the router's logits would be the first block
to fail), any set we choose as a top k satisfies min(reference logits we chose) >= max(reference logits we left) - 2d.
A chosen set that misses that bound, or holds another number of experts, is a routing bug, never a near-tie.
"""

from __future__ import annotations

import torch

from .localise import stream_at

ROUTER, ROUTER_LOGITS = "router", "router_logits"
MAX_EXAMINED = 8   # failing positions of one prompt examined for near-ties; more failures are judged as failures


def routing_flip_within_error(expected_logits: torch.Tensor, actual_logits: torch.Tensor,
                              expected_routing: torch.Tensor, actual_routing: torch.Tensor) -> dict | None:
    """One position's router at one layer: logits [E] and dense routing weights [E] (0 = not chosen) of the reference
    and of the implementation. None when both chose the same experts; else {"accepted", "shortfall", "logit_error",
    "reference_experts", "chosen_experts"}: accepted when the chosen set is a top k of the reference's logits moved by
    at most the measured logit error (shortfall <= 2 x logit_error)."""
    chosen, reference = actual_routing != 0, expected_routing != 0
    if torch.equal(chosen, reference):
        return None
    expected_logits, actual_logits = expected_logits.float(), actual_logits.float()
    error = float((actual_logits - expected_logits).abs().max())
    same_k = int(chosen.sum()) == int(reference.sum()) and bool((~chosen).any())
    shortfall = float(expected_logits[~chosen].max() - expected_logits[chosen].min()) if same_k else float("inf")
    return {"accepted": same_k and shortfall <= 2 * error, "shortfall": shortfall, "logit_error": error,
            "reference_experts": reference.nonzero().flatten().tolist(),
            "chosen_experts": chosen.nonzero().flatten().tolist()}


def near_tie_at(expected: list, actual: list, first_failing: dict | None) -> dict | None:
    """expected/actual: one position's [(layer, sub-block, Tensor)] (localisation's streams). The near-tie verdict
    when the first sub-block out of tolerance is a router whose raw logits both sides recorded, else None."""
    if first_failing is None or first_failing["sub_block"] != ROUTER:
        return None
    layer = first_failing["layer"]
    logits = stream_at(expected, layer, ROUTER_LOGITS), stream_at(actual, layer, ROUTER_LOGITS)
    if logits[0] is None or logits[1] is None:
        return None
    flip = routing_flip_within_error(logits[0], logits[1], stream_at(expected, layer, ROUTER),
                                     stream_at(actual, layer, ROUTER))
    return None if flip is None else {"layer": layer, **flip}


def near_tie_line(tie: dict) -> str:
    """One accepted near-tie in words."""
    return (f"prompt {tie['prompt']} position {tie['position']} ({tie['phase']}): layer {tie['layer']} router chose "
            f"experts {tie['chosen_experts']} where the reference chose {tie['reference_experts']}; the reference's "
            f"logits are {tie['shortfall']:.3g} from making that choice, within 2 x the router-logit error "
            f"{tie['logit_error']:.3g} measured there")
