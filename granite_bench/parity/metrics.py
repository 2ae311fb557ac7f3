"""Pure logit-validation functions: expected vs actual logits -> per-position metrics and a verdict.

Semantics follow NxDI logit matching: per position, entries that are non-finite on either side are
dropped, a constant shift is removed, and for each k of a tolerance map the top-k entries of the
expected logits are compared with

    err_k = max over those entries of (|actual - expected| - atol) / max |expected over those entries|

which passes when err_k <= rtol (k = None means the whole vocabulary). Greedy token streams are
compared separately: a divergence is acceptable when the reference itself barely preferred its own
token (its logit gap between the two tokens is below the divergence tolerance).

Everything here takes tensors on any device and computes in float32 on the CPU. Positions are
processed in chunks of rows so that a few hundred positions of a 100k vocabulary stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from granite_bench.parity.tolerances import ToleranceProfile

TolMap = dict[int | None, tuple[float, float]]

ROWS_PER_CHUNK = 64  # 64 rows x 100k vocab x 4 bytes = 25 MB per temporary
TOPK_OVERLAP_K = 5


def _as_rows(x: Tensor) -> Tensor:
    """Any tensor [..., V] -> float32 CPU [N, V]."""
    x = x.detach().to(device="cpu", dtype=torch.float32)
    return x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x


def _check_same_shape(expected: Tensor, actual: Tensor) -> None:
    if expected.shape != actual.shape:
        raise ValueError(f"expected and actual logits differ in shape: {tuple(expected.shape)} vs {tuple(actual.shape)}")


def _chunks(n: int):
    for start in range(0, n, ROWS_PER_CHUNK):
        yield slice(start, min(start + ROWS_PER_CHUNK, n))


def _comparable(expected: Tensor, actual: Tensor) -> Tensor:
    """[N, V] bool: entries finite on both sides (the ones that take part in the comparison)."""
    return torch.isfinite(expected) & torch.isfinite(actual)


def _invalid(x: Tensor) -> Tensor:
    """nan or +inf: values no logit should take (-inf is a legitimate mask)."""
    return torch.isnan(x) | torch.isposinf(x)


def _masked(x: Tensor, mask: Tensor | None, fill: float) -> Tensor:
    """x where mask holds, else fill; mask None means every entry is comparable."""
    return x if mask is None else torch.where(mask, x, fill)


def _chunk_mask(e: Tensor, a: Tensor) -> Tensor | None:
    """Comparable entries of a chunk, or None when all of them are (the common, cheap case)."""
    mask = _comparable(e, a)
    return None if bool(mask.all()) else mask


def _fit_shift(e: Tensor, a: Tensor, mask: Tensor | None) -> Tensor:
    """[n] shift of the per-row least-squares fit a ~ slope * e + shift over the comparable entries."""
    e, a = _masked(e, mask, 0.0), _masked(a, mask, 0.0)
    n = torch.full((e.shape[0],), float(e.shape[1])) if mask is None else mask.sum(-1).clamp_min(1).float()
    mean_e = e.sum(-1) / n
    mean_a = a.sum(-1) / n
    de = _masked(e - mean_e[:, None], mask, 0.0)
    da = _masked(a - mean_a[:, None], mask, 0.0)
    var_e = (de * de).sum(-1)
    cov = (de * da).sum(-1)
    # A constant expected row has no slope to fit: fall back to slope 1 (a pure shift).
    slope = torch.where(var_e > 0, cov / torch.where(var_e > 0, var_e, 1.0), 1.0)
    return mean_a - slope * mean_e


def _shifted(e: Tensor, a: Tensor, mask: Tensor | None) -> Tensor:
    return a - _fit_shift(e, a, mask)[:, None]


def remove_constant_shift(expected: Tensor, actual: Tensor) -> Tensor:
    """Per row, fit actual ~ slope * expected + shift over entries finite on both sides and
    return actual - shift (same shape as the input, float32 on CPU)."""
    _check_same_shape(expected, actual)
    shape = actual.shape
    e, a = _as_rows(expected), _as_rows(actual)
    out = torch.empty_like(a)
    for rows in _chunks(a.shape[0]):
        out[rows] = _shifted(e[rows], a[rows], _chunk_mask(e[rows], a[rows]))
    return out.reshape(shape)


def tol_key_name(k: int | None) -> str:
    """'all' for the whole vocabulary, 'top50' for k = 50."""
    return "all" if k is None else f"top{k}"


def _errors_for_k(e: Tensor, a: Tensor, mask: Tensor | None, k: int | None, atol: float) -> Tensor:
    """[n] err_k of each row of a chunk; +inf where a row has nothing to compare."""
    if k is None:
        e_sel, a_sel, m_sel = e, a, mask
    else:
        k = min(k, e.shape[-1])
        idx = _masked(e, mask, float("-inf")).topk(k, dim=-1).indices  # [n, k]; dropped entries rank last
        e_sel, a_sel = e.gather(-1, idx), a.gather(-1, idx)
        m_sel = None if mask is None else mask.gather(-1, idx)
    diff = _masked((a_sel - e_sel).abs(), m_sel, float("-inf")).amax(-1)
    scale = _masked(e_sel.abs(), m_sel, 0.0).amax(-1).clamp_min(torch.finfo(torch.float32).tiny)
    err = ((diff - atol) / scale).clamp_min(0.0)
    return err if m_sel is None else torch.where(m_sel.any(-1), err, float("inf"))


def _chunk_errors(e: Tensor, a: Tensor, mask: Tensor | None, tol_map: TolMap) -> dict[str, Tensor]:
    out = {}
    for k, (atol, rtol) in tol_map.items():
        err = _errors_for_k(e, a, mask, k, atol)
        out[f"err_{tol_key_name(k)}"] = err
        out[f"pass_{tol_key_name(k)}"] = err <= rtol
    return out


def _cat_chunks(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def position_errors(expected: Tensor, actual: Tensor, tol_map: TolMap) -> dict[str, Tensor]:
    """Per position, for each k in tol_map: err_<k> (float32 [N]) and pass_<k> (bool [N]).

    Inputs are [N, V] (or [..., V], flattened to rows). Entries that are -inf or nan on either side
    are dropped from their row; a row with nothing left to compare gets err = inf (fails).
    Errors below atol are reported as 0. No shift is removed here (see remove_constant_shift)."""
    _check_same_shape(expected, actual)
    e, a = _as_rows(expected), _as_rows(actual)
    _require_positions(e)
    parts = [_chunk_errors(e[r], a[r], _chunk_mask(e[r], a[r]), tol_map) for r in _chunks(e.shape[0])]
    return _cat_chunks(parts)


def _chunk_metrics(e: Tensor, a: Tensor, mask: Tensor | None) -> dict[str, Tensor]:
    """Tolerance-free metrics of one chunk of rows [n, V]; mask None = all entries comparable."""
    n_compared = torch.full((e.shape[0],), e.shape[1]) if mask is None else mask.sum(-1)
    abs_err = _masked((a - e).abs(), mask, 0.0)
    max_abs = abs_err.amax(-1)
    max_expected = _masked(e.abs(), mask, 0.0).amax(-1).clamp_min(torch.finfo(torch.float32).tiny)

    e_ranked, a_ranked = _masked(e, mask, float("-inf")), _masked(a, mask, float("-inf"))
    log_p_e = torch.log_softmax(e_ranked, dim=-1)
    log_p_a = torch.log_softmax(a_ranked, dim=-1)
    kl_terms = F.kl_div(log_p_a, log_p_e, reduction="none", log_target=True)  # p_e * (log p_e - log p_a)
    kl = _masked(kl_terms, mask, 0.0).sum(-1)

    k = min(TOPK_OVERLAP_K, e.shape[-1])
    top_e = e_ranked.topk(k, dim=-1).indices  # [n, k]
    top_a = a_ranked.topk(k, dim=-1).indices
    overlap = (top_e[:, :, None] == top_a[:, None, :]).any(-1).sum(-1).to(torch.float32) / k

    invalid_count = torch.zeros_like(n_compared) if mask is None else (_invalid(e) | _invalid(a)).sum(-1)
    nothing = n_compared == 0
    return {
        "max_abs_err": max_abs.masked_fill(nothing, float("nan")),
        "mean_abs_err": (abs_err.sum(-1) / n_compared.clamp_min(1)).masked_fill(nothing, float("nan")),
        "max_rel_err": (max_abs / max_expected).masked_fill(nothing, float("nan")),
        "kl_ref_impl": kl.masked_fill(nothing, float("nan")),
        "top1_match": top_e[:, 0] == top_a[:, 0],
        "topk_overlap": overlap,
        "expected_top1_prob": log_p_e.amax(-1).exp(),
        "invalid_count": invalid_count,
        "n_compared": n_compared,
    }


def _require_positions(e: Tensor) -> None:
    if e.shape[0] == 0 or e.shape[-1] == 0:
        raise ValueError(f"no logits to compare (shape {tuple(e.shape)})")


def position_metrics(
    expected: Tensor, actual: Tensor, profile: ToleranceProfile, remove_shift: bool = True
) -> dict[str, Any]:
    """Per-position metrics of expected vs actual logits [N, V] under a tolerance profile.

    Returns a dict of 1-D tensors of length N: position, max_abs_err, mean_abs_err, max_rel_err,
    err_<k>/pass_<k> for each k of the profile, kl_ref_impl (KL(softmax(expected) || softmax(actual))
    in nats), top1_match, topk_overlap (|top5(e) & top5(a)| / 5), expected_top1_prob,
    invalid_count (nan or +inf entries on either side), n_compared and passed; plus 'tol_keys' (list of the k names) and 'profile' (its name).
    Errors are measured after removing the constant shift (unless remove_shift=False).
    A position passes when every pass_<k> holds and neither side holds a nan or +inf: -inf is a
    mask (dropped, as NxDI does), the other two are never legitimate logits."""
    _check_same_shape(expected, actual)
    e, a = _as_rows(expected), _as_rows(actual)
    _require_positions(e)
    parts = []
    for rows in _chunks(e.shape[0]):
        e_c, a_c = e[rows], a[rows]
        mask = _chunk_mask(e_c, a_c)
        if remove_shift:
            a_c = _shifted(e_c, a_c, mask)
        parts.append({**_chunk_metrics(e_c, a_c, mask), **_chunk_errors(e_c, a_c, mask, profile.tol_map)})
    metrics: dict[str, Any] = {"position": torch.arange(e.shape[0]), **_cat_chunks(parts)}
    passed = metrics["invalid_count"] == 0
    for k in profile.tol_map:
        passed = passed & metrics[f"pass_{tol_key_name(k)}"]
    metrics["passed"] = passed
    metrics["tol_keys"] = [tol_key_name(k) for k in profile.tol_map]
    metrics["profile"] = profile.name
    return metrics


def divergence_gap(expected_logits: Tensor, expected_token: int, actual_token: int) -> float:
    """The reference's own logit gap |expected[expected_token] - expected[actual_token]| (inf when
    the reference masked the token the implementation chose)."""
    row = expected_logits.detach().to(device="cpu", dtype=torch.float32).reshape(-1)
    gap = (row[int(expected_token)] - row[int(actual_token)]).abs().item()
    return gap if gap == gap else float("inf")  # nan (inf - inf) counts as unbounded


def greedy_comparison(
    expected_tokens: Tensor, actual_tokens: Tensor, expected_logits: Tensor, divergence_tolerance: float
) -> list[dict]:
    """Per batch row of greedy tokens [B, T] with the reference logits [B, T, V]:
    match_rate, first_divergence (step index or None), divergence_gap at it (None without one) and
    divergence_acceptable (gap < tolerance; True when the row never diverges).
    Streams of different lengths are compared over their common length."""
    expected_tokens = expected_tokens.detach().cpu().reshape(expected_tokens.shape[0], -1)
    actual_tokens = actual_tokens.detach().cpu().reshape(actual_tokens.shape[0], -1)
    if expected_tokens.shape[0] != actual_tokens.shape[0] or expected_logits.shape[0] != expected_tokens.shape[0]:
        raise ValueError("expected tokens, actual tokens and expected logits must share the batch dimension")
    steps = min(expected_tokens.shape[1], actual_tokens.shape[1], expected_logits.shape[1])
    same = expected_tokens[:, :steps] == actual_tokens[:, :steps]  # [B, T]
    rows = []
    for b in range(same.shape[0]):
        diverged = (~same[b]).nonzero()
        first = int(diverged[0]) if len(diverged) else None
        gap = None
        if first is not None:
            gap = divergence_gap(expected_logits[b, first], expected_tokens[b, first], actual_tokens[b, first])
        rows.append(
            {
                "row": b,
                "steps": steps,
                "match_rate": same[b].float().mean().item() if steps else float("nan"),
                "first_divergence": first,
                "divergence_gap": gap,
                "divergence_acceptable": first is None or gap < divergence_tolerance,
            }
        )
    return rows


@dataclass
class ParityVerdict:
    passed: bool
    n_positions: int
    n_failed: int
    first_failed: int | None
    worst: dict = field(default_factory=dict)  # metric -> {"value": float, "position": int}
    n_diverged_rows: int = 0
    n_unacceptable_divergences: int = 0

    def summary(self) -> dict:
        """Flat dict of plain Python scalars (one row of a results table)."""
        out = {
            "passed": self.passed,
            "n_positions": self.n_positions,
            "n_failed": self.n_failed,
            "first_failed": self.first_failed,
            "n_diverged_rows": self.n_diverged_rows,
            "n_unacceptable_divergences": self.n_unacceptable_divergences,
        }
        for name, worst in self.worst.items():
            out[f"worst_{name}"] = worst["value"]
            out[f"worst_{name}_position"] = worst["position"]
        return out


def _worst(values: Tensor, largest: bool = True) -> dict:
    """Worst value of a per-position metric and where it occurs (nan counts as worst)."""
    v = values.to(torch.float32)
    key = torch.where(torch.isnan(v), float("inf") if largest else float("-inf"), v)
    pos = int(key.argmax() if largest else key.argmin())
    return {"value": float(v[pos]), "position": pos}


WORST_LARGEST = ("max_abs_err", "max_rel_err", "kl_ref_impl")
WORST_SMALLEST = ("topk_overlap",)


def verdict(metrics: dict[str, Any], greedy: list[dict] | None = None) -> ParityVerdict:
    """Fold per-position metrics (and optionally greedy_comparison rows) into one verdict:
    passes when every position passes and no greedy row diverges unacceptably."""
    passed = metrics["passed"]
    n = int(passed.numel())
    failed = (~passed).nonzero()
    worst: dict[str, dict] = {}
    if n:
        names = [f"err_{k}" for k in metrics.get("tol_keys", [])] + list(WORST_LARGEST)
        worst = {name: _worst(metrics[name]) for name in names if name in metrics}
        worst.update({name: _worst(metrics[name], largest=False) for name in WORST_SMALLEST if name in metrics})
    greedy = greedy or []
    diverged = [g for g in greedy if g["first_divergence"] is not None]
    unacceptable = [g for g in diverged if not g["divergence_acceptable"]]
    return ParityVerdict(
        passed=len(failed) == 0 and not unacceptable,
        n_positions=n,
        n_failed=len(failed),
        first_failed=int(failed[0]) if len(failed) else None,
        worst=worst,
        n_diverged_rows=len(diverged),
        n_unacceptable_divergences=len(unacceptable),
    )


def max_logit_difference(logits: list[Tensor], baseline: list[Tensor]) -> float:
    """max |a - b| over every position of every prompt (e.g. TP-N against TP-1 teacher-forced logits)."""
    return max(float((a.float() - b.float()).abs().max()) for a, b in zip(logits, baseline, strict=True))
