"""A comparison stored (table `comparisons`, one row per printed line) and printed."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..results import stats
from ..results.store import ResultStore
from .verdict import BETTER, CHANGED, MISSING, NEW, REGRESSION, SAME


def _as_float(value) -> float:
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def format_value(value) -> str:
    if isinstance(value, bool):
        return "pass" if value else "FAIL"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def side_columns(side, prefix: str) -> dict:
    tree = side.tree
    return {f"{prefix}_spec": side.spec, f"{prefix}_sha": tree.sha if tree else "",
            f"{prefix}_dirty": bool(tree.dirty) if tree else False, f"{prefix}_runs": ",".join(side.run_ids),
            f"{prefix}_source": side.source}


def comparison_frame(comparison) -> pd.DataFrame:
    records = []
    for row in comparison.rows:
        records.append({"kind": row.kind, "group": row.group, "metric": row.metric,
                        "baseline_text": format_value(row.baseline), "candidate_text": format_value(row.candidate),
                        "ratio": row.ratio, "ci_low": row.ci_low, "ci_high": row.ci_high, "p_value": row.p_value,
                        "p_adjusted": row.p_adjusted, "verdict": row.verdict, "detail": row.detail,
                        "source_table": row.table, "baseline_value": _as_float(row.baseline),
                        "candidate_value": _as_float(row.candidate), "regressed": comparison.regressed,
                        **side_columns(comparison.baseline, "baseline"),
                        **side_columns(comparison.candidate, "candidate"),
                        "notes": " | ".join(comparison.notes)})
    return pd.DataFrame(records)


def store_comparison(store: ResultStore, comparison) -> Path | None:
    from ..results.metadata import collect_run_metadata, require_directions
    frame = comparison_frame(comparison)
    if frame.empty:
        return None
    settings = {k: v for k, v in comparison.settings.items() if k != "stored_as"}
    meta = collect_run_metadata(suite="compare", device="cpu", dtype="-", config=settings, seed=0)
    return store.write("comparisons", require_directions("comparisons", frame), meta)


VERDICT_STYLE = {REGRESSION: "bold red", MISSING: "yellow", NEW: "cyan", CHANGED: "yellow", BETTER: "green",
                 stats.FASTER: "green", SAME: "", stats.PASS: "", stats.REPORTED: "dim"}


def render(console, comparison) -> None:
    from rich.table import Table
    b, c = comparison.baseline, comparison.candidate
    console.print(f"[bold]compare[/] baseline {b.spec} ({b.source or 'code'}) · candidate {c.spec} "
                  f"({c.source or 'code'})")
    table = Table(title="candidate against baseline", title_justify="left")
    for column, justify in (("kind", "left"), ("group", "left"), ("metric", "left"), ("baseline", "right"),
                            ("candidate", "right"), ("ratio", "right"), ("95% CI", "right"), ("p (Holm)", "right"),
                            ("verdict", "left")):
        table.add_column(column, justify=justify)
    for row in comparison.rows:
        ci = "-" if math.isnan(row.ci_low) else f"[{row.ci_low:.3f}, {row.ci_high:.3f}]"
        p = "-" if math.isnan(row.p_adjusted) else f"{row.p_adjusted:.3g}"
        ratio = "-" if math.isnan(row.ratio) else f"{row.ratio:.3f}"
        style = VERDICT_STYLE.get(row.verdict, "")
        verdict = f"[{style}]{row.verdict}[/]" if style else row.verdict
        if row.detail and row.verdict == REGRESSION:
            verdict += f" ({row.detail})"
        table.add_row(row.kind, row.group, row.metric, format_value(row.baseline), format_value(row.candidate),
                      ratio, ci, p, verdict)
    console.print(table)
    for note in comparison.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    s = comparison.settings
    if s.get("design", "pooled") == "pooled":
        console.print(f"timing gate: regression = one-sided Mann-Whitney p < {s['alpha']:g} after Holm over the "
                      f"gated metrics AND median ratio > {1 + s['floor']:.2f}; tails are reported only")
    else:
        console.print(f"timing gate ({s.get('clock', 'cpu')} clock): regression = one-sided Wilcoxon signed-rank p of "
                      f"the paired round ratios under this look's share of alpha {s['alpha']:g} after Holm AND "
                      f"ratio > {1 + s['floor']:.2f}; other clocks and tails are reported only")
    if comparison.regressed:
        bad = [f"{r.metric} ({r.group})" for r in comparison.rows if r.verdict == REGRESSION]
        console.print(f"[bold red]REGRESSION[/] {len(bad)}: {'; '.join(bad[:8])}")
    else:
        console.print("[bold green]OK[/] no regression")
    if s.get("stored_as"):
        console.print(f"stored: {s['stored_as']}")


def to_json(comparison) -> str:
    """The comparison's rows as JSON records (what is stored)."""
    return comparison_frame(comparison).to_json(orient="records")
