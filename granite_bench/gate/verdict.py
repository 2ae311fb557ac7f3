"""The verdict of a comparison: deterministic rows (parity_summary, eval_summary) matched by their key columns and
judged value by value in each metric's declared direction (results.metadata.METRIC_DIRECTIONS); timing rows from
the interleaved A/B trials judged statistically (results.stats.gate_timings). No git, no subprocess, no model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from ..results import stats
from ..results.metadata import gated_direction, metadata_column_names

# Verdicts, mildest first; the worst verdict over a group's rows is the group's verdict.
SAME, BETTER, CHANGED, NEW, MISSING, REGRESSION = "same", "better", "changed", "new", "missing", "regression"
SEVERITY = {stats.REPORTED: 0, stats.PASS: 0, SAME: 0, BETTER: 1, stats.FASTER: 1, CHANGED: 2, NEW: 3, MISSING: 3,
            REGRESSION: 9}

DEFAULT_ERROR_GROWTH = 2.0     # an error metric fails when it grows past this factor ...
ERROR_ABS_FLOOR = 1e-6         # ... and by more than this (fp32 errors near zero jitter with any reordering)

# Per deterministic table: the columns that say which result a row is (those present are used).
KEY_COLUMNS = {
    "parity_summary": ["suite", "model", "dtype", "device", "tp_degree", "compiled", "prompt"],
    "eval_summary": ["suite", "model", "dtype", "device", "tp", "tp_degree", "task", "task_version", "num_fewshot",
                     "limit"],
}
# Key columns that say what was measured, not only where: a row is never matched with one that lacks them or has
# another value (a task whose data changed is a new task, not a regression of the old one).
VERSION_COLUMNS = {"eval_summary": ["task_version"]}
UNRECORDED = "unrecorded"
# A row's group in the printed table: the key without the per-item column.
ITEM_COLUMNS = {"parity_summary": ["prompt"], "eval_summary": []}


class CompareError(ValueError):
    """A side that cannot be resolved or compared (one line, says what to change)."""


@dataclass
class Row:
    kind: str                 # deterministic | timing | tail
    table: str
    group: str                # which configuration (model, dtype, ...) or the timing setup
    metric: str
    baseline: object
    candidate: object
    verdict: str
    ratio: float = float("nan")
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    p_value: float = float("nan")
    p_adjusted: float = float("nan")
    detail: str = ""


def compared_metrics(table: str, frame: pd.DataFrame, keys: list[str]) -> dict[str, str]:
    """Columns to compare: gated booleans and numbers (by the table's declared directions), outside the keys and
    run metadata."""
    skip = set(keys) | set(metadata_column_names()) | {"run_passed"}
    found = {}
    for column in frame.columns:
        if column in skip:
            continue
        series = frame[column]
        if not (pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series)):
            continue
        direction = gated_direction(table, column)
        if direction is not None:
            found[column] = direction
    return found


def judge_value(base, cand, direction: str, error_growth: float) -> str:
    """Verdict of one value pair. Accuracies, rates and verdicts gate exactly; error metrics with a growth factor."""
    if _missing(base) and _missing(cand):
        return SAME
    if _missing(cand):
        return MISSING
    if _missing(base):
        return NEW
    base, cand = float(base), float(cand)
    if cand == base:
        return SAME
    if direction == "higher":
        return REGRESSION if cand < base else BETTER
    if cand < base:
        return BETTER
    if cand > max(error_growth * base, base + ERROR_ABS_FLOOR):
        return REGRESSION
    return CHANGED


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def worst(verdicts) -> str:
    verdicts = list(verdicts)
    return max(verdicts, key=lambda v: SEVERITY.get(v, 0)) if verdicts else SAME


def _aggregate(values: pd.Series, direction: str):
    values = values.dropna()
    if values.empty:
        return float("nan")
    if pd.api.types.is_bool_dtype(values) or values.map(lambda v: isinstance(v, bool)).all():
        return bool(values.astype(bool).all())
    return float(values.min()) if direction == "higher" else float(values.max())


def latest_per_key(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per key: the one from the most recent run."""
    if frame.empty:
        return frame
    order = [c for c in ("utc_time", "run_id") if c in frame.columns]
    frame = frame.sort_values(order) if order else frame
    return frame.drop_duplicates(keys, keep="last") if keys else frame


def group_label(columns, values) -> str:
    """'parity/default tiny-gqa float32 cpu tp_degree=1 compiled=False': strings as they are, others named."""
    return " ".join(str(v) if isinstance(v, str) else f"{k}={v}" for k, v in zip(columns, values))


PERPLEXITY_LIKE = ("perplexity", "bits_per_byte", "ppl")


def with_derived_columns(table: str, frame: pd.DataFrame) -> pd.DataFrame:
    """eval_summary keeps each task's main metric in one column (impl_value) whose direction depends on the metric
    named beside it: split it into impl_accuracy (higher is better) and impl_perplexity (lower is better)."""
    if table != "eval_summary" or not {"metric", "impl_value"} <= set(frame.columns):
        return frame
    lower = frame["metric"].astype(str).str.contains("|".join(PERPLEXITY_LIKE))
    value = pd.to_numeric(frame["impl_value"], errors="coerce")
    return frame.assign(impl_accuracy=value.where(~lower), impl_perplexity=value.where(lower))


def compare_table(table: str, base: pd.DataFrame, cand: pd.DataFrame, error_growth: float) -> list[Row]:
    """Rows of one deterministic table, matched by key, judged per item, shown per group and metric."""
    base, cand = with_derived_columns(table, base), with_derived_columns(table, cand)
    for column in VERSION_COLUMNS.get(table, []):
        if column in base.columns or column in cand.columns:
            base = base.assign(**{column: base[column].astype(str) if column in base.columns else UNRECORDED})
            cand = cand.assign(**{column: cand[column].astype(str) if column in cand.columns else UNRECORDED})
    keys = [k for k in KEY_COLUMNS.get(table, []) if k in base.columns and k in cand.columns]
    items = [k for k in ITEM_COLUMNS.get(table, []) if k in keys]
    groups = [k for k in keys if k not in items]
    base, cand = latest_per_key(base, keys), latest_per_key(cand, keys)
    metrics = compared_metrics(table, base, keys)
    metrics = {m: d for m, d in metrics.items() if m in cand.columns}
    if not keys or not metrics:
        return []
    merged = base[keys + list(metrics)].merge(cand[keys + list(metrics)], on=keys, how="outer",
                                              suffixes=("__b", "__c"), indicator=True)
    rows = []
    for group_values, part in merged.groupby(groups, dropna=False, sort=True) if groups else [((), merged)]:
        group_values = group_values if isinstance(group_values, tuple) else (group_values,)
        label = group_label(groups, group_values)
        for metric, direction in metrics.items():
            verdicts, bad_items = [], []
            for _, row in part.iterrows():
                if row["_merge"] == "left_only":
                    verdict = MISSING
                elif row["_merge"] == "right_only":
                    verdict = NEW
                else:
                    verdict = judge_value(row[f"{metric}__b"], row[f"{metric}__c"], direction, error_growth)
                verdicts.append(verdict)
                if verdict == REGRESSION:
                    bad_items.append(" ".join(f"{k}={row[k]}" for k in items) or label)
            both = part[part["_merge"] == "both"]
            b_value = _aggregate(both[f"{metric}__b"], direction) if len(both) else float("nan")
            c_value = _aggregate(both[f"{metric}__c"], direction) if len(both) else float("nan")
            ratio = (c_value / b_value if isinstance(b_value, float) and isinstance(c_value, float)
                     and b_value not in (0.0,) and not math.isnan(b_value) else float("nan"))
            rows.append(Row(kind="deterministic", table=table, group=label, metric=metric, baseline=b_value,
                            candidate=c_value, verdict=worst(verdicts), ratio=ratio,
                            detail=("worse at " + ", ".join(bad_items[:5])) if bad_items else ""))
    return rows


def compare_deterministic(base: dict[str, pd.DataFrame], cand: dict[str, pd.DataFrame],
                          error_growth: float = DEFAULT_ERROR_GROWTH) -> list[Row]:
    rows = []
    for table in KEY_COLUMNS:
        b, c = base.get(table, pd.DataFrame()), cand.get(table, pd.DataFrame())
        if b.empty and c.empty:
            continue
        if b.empty or c.empty:
            rows.append(Row(kind="deterministic", table=table, group="", metric="(table)", baseline=len(b),
                            candidate=len(c), verdict=MISSING if c.empty else NEW,
                            detail="rows on one side only"))
            continue
        rows += compare_table(table, b, c, error_growth)
    return rows


def timing_rows(result, tests: list, setup: str, detail: str, reported: list | None = None) -> list[Row]:
    """Rows of the timing tests (gated), of other clocks' tests (reported beside them) and of the tail percentiles."""
    def row(t, verdict):
        return Row(kind="timing", table="ab", group=setup, metric=t.metric,
                   baseline=t.baseline_median, candidate=t.candidate_median, verdict=verdict, ratio=t.ratio,
                   ci_low=t.ci_low, ci_high=t.ci_high, p_value=t.p_slower, p_adjusted=t.p_adjusted, detail=detail)
    rows = [row(t, t.verdict) for t in tests]
    rows += [row(t, stats.REPORTED) for t in reported or []]
    for metric, (base, cand) in result.tails.items():
        rows.append(Row(kind="tail", table="ab", group=setup, metric=metric, baseline=base, candidate=cand,
                        verdict=stats.REPORTED, ratio=cand / base if base else float("nan"),
                        detail="over every repetition; reported, not gated"))
    return rows
