"""Pure checks of served top-K log-probabilities (what an OpenAI-compatible endpoint returns) against the reference's
full logits at the same positions: the endpoint gives only its K most likely tokens per position, so the full-vocabulary
metrics of `metrics.py` cannot be computed; these are the ones that can.

Per position, with the served {token: logprob} (its top K, plus the token actually there) and the reference logits
row [V]:
- logprob_err: max |served logprob - reference log-softmax| over the tokens both rank in their top K;
- token_logprob_err: the same for the position's own token (the prompt's next token, or the greedy token);
- ref_top1_in_served: the reference's most likely token is among the served ones;
- served_top1_rank: the reference's rank of the served most likely token (1 = they agree);
- topk_overlap: |served top K & reference top K| / K;
- err_top<k> for each k of the tolerance profile (k capped at K/2; the whole vocabulary cannot be judged): NxDI's
  error over the reference's top k, err = (max |a + shift - e| - atol) / max |e|, with e the reference logits, a the
  served log-probabilities and shift their mean difference there (log-probabilities are logits less a constant); a
  reference top-k token the endpoint did not return fails the position (err = inf).
A position passes when every err_top<k> is within its rtol and the reference's top-1 is among the served tokens.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .metrics import tol_key_name


def judged_keys(tol_map: dict, k: int) -> dict[int, tuple[float, float]]:
    """{min(k_profile, K // 2): (atol, rtol)} for every top-k entry of the profile ("all" cannot be judged from K):
    the reference's top K/2 must all be among the served top K, so that tokens trading places at the edge of the
    served list (bf16 rounding does) are not failures; the stricter rtol where two entries meet."""
    judged: dict[int, tuple[float, float]] = {}
    for key, tolerance in tol_map.items():
        if key is not None:
            capped = min(key, max(1, k // 2))
            judged[capped] = min(judged.get(capped, tolerance), tolerance, key=lambda t: t[1])
    return judged


def topk_error(ref_logits: Tensor, served: dict[int, float], k: int, atol: float) -> float:
    ids = ref_logits.topk(k).indices.tolist()
    if any(i not in served for i in ids):
        return math.inf
    e = ref_logits[ids]                                                            # [k]
    a = torch.tensor([served[i] for i in ids], dtype=torch.float64).float()
    shift = (e - a).mean()
    return max(float((a + shift - e).abs().max()) - atol, 0.0) / max(float(e.abs().max()), 1e-30)


def position_row(ref_logits: Tensor, served: dict[int, float], token: int, k: int, tol: dict) -> dict:
    """One position's metrics (plain Python values): ref_logits [V] float32, served {token id: logprob}."""
    ref_logits = ref_logits.float()
    ref_lp = torch.log_softmax(ref_logits, -1)                                     # [V]
    ref_top = set(ref_lp.topk(k).indices.tolist())
    served_top = sorted(served, key=served.get, reverse=True)[:k]
    common = [t for t in served_top if t in ref_top]
    first = served_top[0]
    row = {
        "logprob_err": max((abs(served[t] - float(ref_lp[t])) for t in common), default=math.inf),
        "token_logprob_err": abs(served[token] - float(ref_lp[token])) if token in served else math.inf,
        "ref_top1_in_served": int(ref_lp.argmax()) in served,
        "served_top1_rank": int((ref_lp > ref_lp[first]).sum()) + 1,
        "topk_overlap": len(common) / k,
    }
    passed = row["ref_top1_in_served"]
    for key, (atol, rtol) in tol.items():
        err = topk_error(ref_logits, served, key, atol)
        row[f"err_{tol_key_name(key)}"] = err
        passed = passed and err <= rtol
    row["passed"] = bool(passed)
    return row
