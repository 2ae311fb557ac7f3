"""Implementation vs reference, sample by sample, from lm-eval's logged samples and aggregate results.

Pure functions over plain Python/pandas data (no model, no torch), so they can be tested on hand-made samples.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..resources import suite_path
from ..schemas import EvalThresholdsFile, SchemaError, read_yaml

THRESHOLDS_FILE = suite_path("eval/thresholds.yaml")
THRESHOLD_KEYS = ("max_abs_delta_loglik", "mean_abs_delta_loglik", "min_argmax_agreement",
                  "min_generation_agreement", "max_metric_difference", "max_perplexity_ratio")
MAIN_METRICS = ("acc", "exact_match", "word_perplexity", "perplexity", "acc_norm")
SKIP_RESULT_KEYS = {"alias", "name", "sample_len", "samples"}

SAMPLE_COLUMNS = ["task", "doc_id", "request_index", "request_type", "is_gold", "impl_loglik", "ref_loglik",
                  "abs_delta_loglik", "impl_is_greedy", "ref_is_greedy", "impl_text", "ref_text",
                  "text_agrees", "target", "impl_score", "ref_score"]


def load_thresholds(dtype: str, path: Path = THRESHOLDS_FILE) -> dict:
    """One dtype's thresholds from an eval thresholds file checked against its schema (schemas.EvalThresholds)."""
    try:
        table = read_yaml(path, EvalThresholdsFile, "eval thresholds")
    except SchemaError as err:
        raise ValueError(str(err)) from None
    if dtype not in table:
        raise ValueError(f"{path} has no thresholds for dtype {dtype!r} (has {', '.join(table)})")
    return {k: float(table[dtype][k]) for k in THRESHOLD_KEYS}


# ------------------------------------------------------------------------------------------ per sample

def first_filter_samples(samples: list[dict]) -> dict[int, dict]:
    """{doc_id: sample} keeping one filter's entries (raw responses are the same under every filter)."""
    if not samples:
        return {}
    first = samples[0].get("filter", "none")
    return {s["doc_id"]: s for s in samples if s.get("filter", "none") == first}


def doc_score(sample: dict) -> float:
    """The sample's first metric as one number (a perplexity pair (loglik, count) gives loglik / count)."""
    for name in sample.get("metrics", []):
        value = sample.get(name)
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return float(value[0]) / max(float(value[1]), 1.0)
        if value is not None:
            try:
                return float(value)
            except (TypeError, ValueError):
                continue
    return math.nan


def response_fields(response) -> tuple[float, bool | None, str | None]:
    """(loglik, is_greedy, text) of one raw lm-eval response."""
    if isinstance(response, str):
        return math.nan, None, response
    if isinstance(response, (tuple, list)):
        return float(response[0]), bool(response[1]), None
    return float(response), None, None


def sample_rows(task: str, output_type: str, impl_samples: list[dict], ref_samples: list[dict]) -> list[dict]:
    """One row per request of every document both runs scored."""
    impl_docs, ref_docs = first_filter_samples(impl_samples), first_filter_samples(ref_samples)
    rows = []
    for doc_id in sorted(set(impl_docs) & set(ref_docs)):
        impl, ref = impl_docs[doc_id], ref_docs[doc_id]
        gold = impl.get("target") if output_type == "multiple_choice" else None
        for index, (ri, rr) in enumerate(zip(impl["resps"], ref["resps"], strict=True)):
            impl_ll, impl_greedy, impl_text = response_fields(ri[0])
            ref_ll, ref_greedy, ref_text = response_fields(rr[0])
            rows.append({
                "task": task, "doc_id": int(doc_id), "request_index": index, "request_type": output_type,
                "is_gold": (index == gold) if isinstance(gold, int) else None,
                "impl_loglik": impl_ll, "ref_loglik": ref_ll, "abs_delta_loglik": abs(impl_ll - ref_ll),
                "impl_is_greedy": impl_greedy, "ref_is_greedy": ref_greedy,
                "impl_text": impl_text, "ref_text": ref_text,
                "text_agrees": (impl_text == ref_text) if impl_text is not None else None,
                "target": str(impl.get("target")), "impl_score": doc_score(impl), "ref_score": doc_score(ref),
            })
    return rows


# ------------------------------------------------------------------------------------------ per task

def task_metrics(results: dict) -> dict[str, float]:
    """lm-eval's aggregate results of one task as {"acc": 0.9, "acc_stderr": 0.02, ...} (filter name dropped)."""
    metrics = {}
    for key, value in results.items():
        if key in SKIP_RESULT_KEYS:
            continue
        name = key.split(",")[0]
        try:
            metrics.setdefault(name, float(value))
        except (TypeError, ValueError):  # "N/A" stderr
            metrics.setdefault(name, math.nan)
    return metrics


def main_metric(metrics: dict[str, float]) -> str:
    for name in MAIN_METRICS:
        if name in metrics:
            return name
    return next((m for m in metrics if not m.endswith("_stderr")), "")


def argmax_agreement(rows: pd.DataFrame, output_type: str) -> float:
    """Share of documents where both runs pick the same answer (multiple choice) or agree on is_greedy."""
    if rows.empty or output_type not in ("multiple_choice", "loglikelihood"):
        return math.nan
    if output_type == "loglikelihood":
        return float((rows["impl_is_greedy"] == rows["ref_is_greedy"]).mean())
    picks = rows.groupby("doc_id").apply(
        lambda doc: doc["impl_loglik"].idxmax() == doc["ref_loglik"].idxmax(), include_groups=False)
    return float(picks.mean())


def generation_agreement(rows: pd.DataFrame) -> float:
    texts = rows["text_agrees"].dropna() if not rows.empty else rows
    return float(texts.astype(bool).mean()) if len(texts) else math.nan


def is_perplexity(metric: str) -> bool:
    return "perplexity" in metric or metric == "bits_per_byte"


def check_thresholds(summary: dict, metric: str, thresholds: dict) -> list[str]:
    """The breached lines of one task summary, as short readable strings."""
    failures = []

    def over(value, limit, what):
        if not math.isnan(value) and value > limit:
            failures.append(f"{what} {value:.3g} > {limit:.3g}")

    def under(value, limit, what):
        if not math.isnan(value) and value < limit:
            failures.append(f"{what} {value:.3g} < {limit:.3g}")

    over(summary["max_abs_delta_loglik"], thresholds["max_abs_delta_loglik"], "max |Δ loglik|")
    over(summary["mean_abs_delta_loglik"], thresholds["mean_abs_delta_loglik"], "mean |Δ loglik|")
    under(summary["argmax_agreement"], thresholds["min_argmax_agreement"], "argmax agreement")
    under(summary["generation_agreement"], thresholds["min_generation_agreement"], "generation agreement")
    if is_perplexity(metric):
        ratio = abs(summary["impl_value"] / summary["ref_value"] - 1) if summary["ref_value"] else math.nan
        over(ratio, thresholds["max_perplexity_ratio"], f"{metric} ratio - 1")
    else:
        over(abs(summary["difference"]), thresholds["max_metric_difference"], f"{metric} difference")
    return failures


def summary_row(task: str, output_type: str, rows: pd.DataFrame, impl_results: dict, ref_results: dict,
                thresholds: dict, dtype: str, truncated: int = 0, task_version=None) -> dict:
    impl_metrics, ref_metrics = task_metrics(impl_results), task_metrics(ref_results)
    metric = main_metric(ref_metrics)
    deltas = rows["abs_delta_loglik"].dropna() if not rows.empty else pd.Series(dtype=float)
    summary = {
        "task": task, "task_version": str(task_version), "output_type": output_type, "metric": metric, "dtype": dtype,
        "n_docs": int(rows["doc_id"].nunique()) if not rows.empty else 0, "n_requests": len(rows),
        "impl_value": impl_metrics.get(metric, math.nan), "impl_stderr": impl_metrics.get(f"{metric}_stderr", math.nan),
        "ref_value": ref_metrics.get(metric, math.nan), "ref_stderr": ref_metrics.get(f"{metric}_stderr", math.nan),
        "argmax_agreement": argmax_agreement(rows, output_type),
        "generation_agreement": generation_agreement(rows) if output_type == "generate_until" else math.nan,
        "max_abs_delta_loglik": float(deltas.max()) if len(deltas) else math.nan,
        "mean_abs_delta_loglik": float(deltas.mean()) if len(deltas) else math.nan,
        "truncated_requests": int(truncated),
        "impl_metrics": json.dumps(impl_metrics, sort_keys=True),
        "ref_metrics": json.dumps(ref_metrics, sort_keys=True),
        "thresholds": json.dumps(thresholds, sort_keys=True),
    }
    summary["difference"] = summary["impl_value"] - summary["ref_value"]
    failures = check_thresholds(summary, metric, thresholds)
    summary["passed"] = not failures
    summary["failures"] = "; ".join(failures)
    return summary


def compare_runs(impl_run: dict, ref_run: dict, output_types: dict[str, str], thresholds: dict, dtype: str,
                 truncated: dict[str, int] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(samples, summary) frames from two lm-eval `simple_evaluate` outputs (log_samples=True)."""
    sample_frames, summaries = [], []
    for task, output_type in output_types.items():
        rows = pd.DataFrame(sample_rows(task, output_type, impl_run["samples"].get(task, []),
                                        ref_run["samples"].get(task, [])), columns=SAMPLE_COLUMNS)
        sample_frames.append(rows)
        summaries.append(summary_row(task, output_type, rows, impl_run["results"].get(task, {}),
                                     ref_run["results"].get(task, {}), thresholds, dtype,
                                     (truncated or {}).get(task, 0), ref_run.get("versions", {}).get(task)))
    samples = pd.concat(sample_frames, ignore_index=True) if sample_frames else pd.DataFrame(columns=SAMPLE_COLUMNS)
    return samples, pd.DataFrame(summaries)


def worst_samples(samples: pd.DataFrame, n: int = 5) -> pd.DataFrame:
    """Per task, the n requests furthest from the reference (disagreeing generations first)."""
    if samples.empty:
        return samples
    ranked = samples.assign(_disagrees=samples["text_agrees"].eq(False),
                            _delta=samples["abs_delta_loglik"].fillna(0.0))
    ranked = ranked.sort_values(["task", "_disagrees", "_delta"], ascending=[True, False, False])
    return ranked.groupby("task").head(n).drop(columns=["_disagrees", "_delta"]).reset_index(drop=True)
