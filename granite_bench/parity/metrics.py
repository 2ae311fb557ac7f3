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


def _fit_shift(expected: Tensor, actual: Tensor, mask: Tensor) -> Tensor:
    """[N] shift of the per-row least-squares fit actual ~ slope * expected + shift over `mask`."""
    w = mask.to(torch.float32)
    n = w.sum(-1).clamp_min(1.0)
    e = torch.where(mask, expected, 0.0)
    a = torch.where(mask, actual, 0.0)
    mean_e = e.sum(-1) / n
    mean_a = a.sum(-1) / n
    de = (e - mean_e[:, None]) * w
    da = (a - mean_a[:, None]) * w
    var_e = (de * de).sum(-1)
    cov = (de * da).sum(-1)
    # A constant expected row has no slope to fit: fall back to slope 1 (a pure shift).
    slope = torch.where(var_e > 0, cov / torch.where(var_e > 0, var_e, 1.0), 1.0)
    return mean_a - slope * mean_e


def remove_constant_shift(expected: Tensor, actual: Tensor) -> Tensor:
    """Per row, fit actual ~ slope * expected + shift over entries finite on both sides and
    return actual - shift (same shape as the input, float32 on CPU)."""
    _check_same_shape(expected, actual)
    shape = actual.shape
    e, a = _as_rows(expected), _as_rows(actual)
    out = torch.empty_like(a)
    for rows in _chunks(a.shape[0]):
        shift = _fit_shift(e[rows], a[rows], _comparable(e[rows], a[rows]))
        out[rows] = a[rows] - shift[:, None]
    return out.reshape(shape)


def tol_key_name(k: int | None) -> str:
    """'all' for the whole vocabulary, 'top50' for k = 50."""
    return "all" if k is None else f"top{k}"


def _errors_for_k(e: Tensor, a: Tensor, mask: Tensor, k: int | None, atol: float) -> Tensor:
    """[n] err_k of each row of a chunk; +inf where a row has nothing to compare."""
    if k is None:
        e_sel, a_sel, m_sel = e, a, mask
    else:
        k = min(k, e.shape[-1])
        ranked = torch.where(mask, e, float("-inf"))  # dropped entries never enter the top-k
        idx = ranked.topk(k, dim=-1).indices  # [n, k]
        e_sel, a_sel, m_sel = e.gather(-1, idx), a.gather(-1, idx), mask.gather(-1, idx)
    diff = torch.where(m_sel, (a_sel - e_sel).abs(), float("-inf")).amax(-1)
    scale = torch.where(m_sel, e_sel.abs(), 0.0).amax(-1).clamp_min(torch.finfo(torch.float32).tiny)
    err = ((diff - atol) / scale).clamp_min(0.0)
    return torch.where(m_sel.any(-1), err, float("inf"))


def position_errors(expected: Tensor, actual: Tensor, tol_map: TolMap) -> dict[str, Tensor]:
    """Per position, for each k in tol_map: err_<k> (float32 [N]) and pass_<k> (bool [N]).

    Inputs are [N, V] (or [..., V], flattened to rows). Entries that are -inf or nan on either side
    are dropped from their row; a row with nothing left to compare gets err = inf (fails).
    Errors below atol are reported as 0. No shift is removed here (see remove_constant_shift)."""
    _check_same_shape(expected, actual)
    e, a = _as_rows(expected), _as_rows(actual)
    n = e.shape[0]
    out: dict[str, Tensor] = {}
    for k, (atol, rtol) in tol_map.items():
        err = torch.empty(n, dtype=torch.float32)
        for rows in _chunks(n):
            err[rows] = _errors_for_k(e[rows], a[rows], _comparable(e[rows], a[rows]), k, atol)
        name = tol_key_name(k)
        out[f"err_{name}"] = err
        out[f"pass_{name}"] = err <= rtol
    return out


def _chunk_metrics(e: Tensor, a: Tensor) -> dict[str, Tensor]:
    """Tolerance-free metrics of one chunk of rows [n, V]."""
    mask = _comparable(e, a)
    any_compared = mask.any(-1)
    abs_err = torch.where(mask, (a - e).abs(), 0.0)
    count = mask.sum(-1).clamp_min(1)
    max_abs = abs_err.amax(-1)
    max_expected = torch.where(mask, e.abs(), 0.0).amax(-1).clamp_min(torch.finfo(torch.float32).tiny)

    log_p_e = torch.log_softmax(torch.where(mask, e, float("-inf")), dim=-1)
    log_p_a = torch.log_softmax(torch.where(mask, a, float("-inf")), dim=-1)
    kl_terms = F.kl_div(log_p_a, log_p_e, reduction="none", log_target=True)  # p_e * (log p_e - log p_a)
    kl = torch.where(mask, kl_terms, 0.0).sum(-1)

    k = min(TOPK_OVERLAP_K, e.shape[-1])
    top_e = torch.where(mask, e, float("-inf")).topk(k, dim=-1).indices  # [n, k]
    top_a = torch.where(mask, a, float("-inf")).topk(k, dim=-1).indices
    overlap = (top_e[:, :, None] == top_a[:, None, :]).any(-1).sum(-1).to(torch.float32) / k

    nan = float("nan")
    return {
        "max_abs_err": torch.where(any_compared, max_abs, nan),
        "mean_abs_err": torch.where(any_compared, abs_err.sum(-1) / count, nan),
        "max_rel_err": torch.where(any_compared, max_abs / max_expected, nan),
        "kl_ref_impl": torch.where(any_compared, kl, nan),
        "top1_match": top_e[:, 0] == top_a[:, 0],
        "topk_overlap": overlap,
        "expected_top1_prob": log_p_e.amax(-1).exp(),
        "nan_count": (torch.isnan(e) | torch.isnan(a)).sum(-1),
        "n_compared": mask.sum(-1),
    }


def position_metrics(
    expected: Tensor, actual: Tensor, profile: ToleranceProfile, remove_shift: bool = True
) -> dict[str, Any]:
    """Per-position metrics of expected vs actual logits [N, V] under a tolerance profile.

    Returns a dict of 1-D tensors of length N: position, max_abs_err, mean_abs_err, max_rel_err,
    err_<k>/pass_<k> for each k of the profile, kl_ref_impl (KL(softmax(expected) || softmax(actual))
    in nats), top1_match, topk_overlap (|top5(e) & top5(a)| / 5), expected_top1_prob, nan_count,
    n_compared and passed; plus 'tol_keys' (list of the k names) and 'profile' (its name).
    A position passes when every pass_<k> holds and neither side holds a nan."""
    _check_same_shape(expected, actual)
    e = _as_rows(expected)
    a = remove_constant_shift(e, actual) if remove_shift else _as_rows(actual)
    n = e.shape[0]
    parts = [_chunk_metrics(e[rows], a[rows]) for rows in _chunks(n)]
    metrics: dict[str, Any] = {"position": torch.arange(n)}
    if parts:
        metrics.update({name: torch.cat([p[name] for p in parts]) for name in parts[0]})
    metrics.update(position_errors(e, a, profile.tol_map))
    passed = metrics["nan_count"] == 0 if parts else torch.zeros(0, dtype=torch.bool)
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
