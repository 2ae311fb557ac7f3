"""`granite-bench dashboard`: one static HTML page (plus its script and style) built from the result store.

Python gathers the data into one JSON object embedded in the page; dashboard_assets/dashboard.js draws every
chart as SVG (no network, no CDN, works from file://). Each chart element carries `data-expected` (how many marks
its data should give) and the script sets `data-drawn` (how many it drew), so a headless browser can check that
every chart drew its data.
"""

from __future__ import annotations

import html
import json
import math
import shutil
import string
import warnings
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from granite_bench.results.changepoints import DEFAULT_ALPHA as CHANGE_POINT_ALPHA
from granite_bench.results.changepoints import e_divisive
from granite_bench.results.load_panel import load_sweep_panel
from granite_bench.results.store import ResultStore

ASSETS = Path(__file__).resolve().with_name("dashboard_assets")
ASSET_FILES = ("dashboard.js", "dashboard.css")
PAGE_TEMPLATE = "page.html"       # string.Template: $names filled by render_page

PERF_TREND_METRICS = ("tpot_p50_ms", "ttft_p50_ms")
PERF_RATIO_METRICS = ("tpot_ratio_hf_eager", "ttft_ratio_hf_eager", "tpot_ratio_hf_static", "ttft_ratio_hf_static")
ROOFLINE_METRICS = ("decode_frac_matvec", "decode_frac_read", "prefill_frac_matmul")
PARITY_ERROR_METRICS = ("worst_max_abs_err", "worst_kl_ref_impl")  # beside every worst_err_<k> the run has
MAX_TREND_CHARTS = 24
MAX_GRID_POINTS = 40


def _clean(value):
    """A JSON-safe scalar (NaN/NA -> None, numpy -> Python)."""
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def _read(store: ResultStore, table: str) -> pd.DataFrame:
    return store.read(table) if table in store.tables() else pd.DataFrame()


def _latest_run(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty or "run_id" not in frame.columns:
        return frame
    last = frame.sort_values(["utc_time", "run_id"])["run_id"].iloc[-1]
    return frame[frame["run_id"] == last]


# ----- sections --------------------------------------------------------------------------------------------------

def parity_matrix(frame: pd.DataFrame) -> dict:
    """Latest verdict per model x (dtype, TP, device), with the worst errors over its prompts."""
    if frame.empty or "model" not in frame.columns:
        return {"rows": [], "columns": [], "cells": []}
    frame = frame.copy()
    tp = frame["tp_degree"] if "tp_degree" in frame.columns else 1
    frame["_column"] = frame["dtype"].astype(str) + " · tp" + pd.Series(tp, index=frame.index).astype(str) + " · " + \
        frame["device"].astype(str)
    if "compiled" in frame.columns:
        frame["_column"] += frame["compiled"].map(lambda c: " · compiled" if c is True else "")
    cells = []
    for (model, column), part in frame.groupby(["model", "_column"], sort=True):
        latest = _latest_run(part)
        passed = latest["run_passed"] if "run_passed" in latest.columns else latest.get("passed")
        cells.append({"model": model, "column": column, "passed": bool(pd.Series(passed).all()),
                      "errors": parity_errors(latest), "judged": judged_errors(latest), "run_id": latest["run_id"].iloc[0],
                      "git_sha": str(latest["git_sha"].iloc[0])[:10], "utc_time": latest["utc_time"].iloc[0],
                      "greedy": _clean(latest["greedy_match_rate"].min()) if "greedy_match_rate" in latest else None,
                      "divergence_accepted": bool(latest["divergence_acceptable"].fillna(True).all())
                      if "divergence_acceptable" in latest else None,
                      "history": int(part["run_id"].nunique())})
    return {"rows": sorted(frame["model"].astype(str).unique()), "columns": sorted(frame["_column"].unique()),
            "cells": cells}


def topk_error_columns(frame: pd.DataFrame) -> list[str]:
    """worst_err_<k> columns with a value in these rows (fp32 runs have all and top5, bf16 runs top50, ...)."""
    return [c for c in frame.columns if c.startswith("worst_err_") and not c.endswith("_position")
            and frame[c].notna().any()]


def parity_errors(latest: pd.DataFrame) -> dict:
    """Worst value over the run's prompts of each error it measured (a metric the run lacks is left out, not '-')."""
    names = [PARITY_ERROR_METRICS[0], *topk_error_columns(latest), PARITY_ERROR_METRICS[1]]
    return {m: _clean(latest[m].max()) for m in names if m in latest.columns and latest[m].notna().any()}


def judged_errors(latest: pd.DataFrame) -> dict:
    """{worst_err_<k>: rtol} for the top-k errors the run's profile judged (its rtol_<k> columns)."""
    return {f"worst_err_{c[len('rtol_'):]}": _clean(latest[c].max()) for c in latest.columns
            if c.startswith("rtol_") and latest[c].notna().any() and f"worst_err_{c[len('rtol_'):]}" in latest}


def series_key(frame: pd.DataFrame) -> list[str]:
    """Columns naming a perf series: the grid point, the implementation and the machine."""
    if "point_key" in frame.columns:
        keys = ["point_key"]
    else:
        keys = [c for c in ("model", "dtype", "device", "tp", "batch_size", "bucket", "new_tokens", "compiled")
                if c in frame.columns]
    return keys + [c for c in ("impl", "machine_fingerprint") if c in frame.columns]


def point_label(row: dict) -> str:
    parts = [str(row.get("model", "")), str(row.get("dtype", "")), f"tp{row.get('tp', row.get('tp_degree', '?'))}",
             f"b{row.get('batch_size', '?')}", f"bucket {row.get('bucket', '?')}"]
    if row.get("compiled") is True:
        parts.append("compiled")
    return " ".join(p for p in parts if p)


def perf_trends(frame: pd.DataFrame, seed: int = 0) -> list[dict]:
    """Per (series, metric): values over runs in time order, with E-Divisive change points."""
    if frame.empty:
        return []
    if "impl" in frame.columns:
        frame = frame[frame["impl"] == "granite"] if (frame["impl"] == "granite").any() else frame
    keys = series_key(frame)
    charts = []
    for _, part in frame.groupby(keys, sort=True, dropna=False):
        part = part.sort_values(["utc_time", "run_id"])
        first = part.iloc[0].to_dict()
        for metric in PERF_TREND_METRICS:
            if metric not in part.columns or part[metric].isna().all():
                continue
            rows = part[part[metric].notna()]
            values = rows[metric].astype(float).tolist()
            found = e_divisive(values, seed=seed)
            charts.append({
                "title": f"{metric} · {point_label(first)}", "metric": metric,
                "machine": str(first.get("machine", first.get("machine_fingerprint", ""))),
                "points": [{"value": v, "sha": str(s)[:8], "time": t, "run_id": r}
                           for v, s, t, r in zip(values, rows["git_sha"], rows["utc_time"], rows["run_id"])],
                "change_points": [{"index": cp.index, "sha": str(rows["git_sha"].iloc[cp.index])[:8],
                                   "p_value": cp.p_value, "change": cp.relative_change} for cp in found],
            })
    charts.sort(key=lambda c: -len(c["points"]))
    return charts[:MAX_TREND_CHARTS]


def perf_grid(frame: pd.DataFrame) -> dict:
    """Latest implementation/HF ratios and roofline fractions per grid point."""
    if frame.empty:
        return {"ratios": [], "roofline": [], "ratio_metrics": [], "roofline_metrics": []}
    if "impl" in frame.columns:
        frame = frame[frame["impl"] == "granite"]
    keys = [k for k in series_key(frame) if k != "impl"]
    latest = frame.sort_values(["utc_time", "run_id"]).drop_duplicates(keys, keep="last").head(MAX_GRID_POINTS)
    ratio_metrics = [m for m in PERF_RATIO_METRICS if m in latest.columns and latest[m].notna().any()]
    roof_metrics = [m for m in ROOFLINE_METRICS if m in latest.columns and latest[m].notna().any()]

    def bars(metrics):
        out = []
        for _, row in latest.iterrows():
            values = {m: _clean(row[m]) for m in metrics}
            if any(v is not None for v in values.values()):
                out.append({"label": point_label(row.to_dict()), "values": values})
        return out

    return {"ratios": bars(ratio_metrics), "roofline": bars(roof_metrics), "ratio_metrics": ratio_metrics,
            "roofline_metrics": roof_metrics}


ACCURACY_COLUMNS = ("impl_value", "ref_value", "argmax_agreement", "generation_agreement")
PERPLEXITY_LIKE = ("perplexity", "bits_per_byte", "ppl")


def accuracy_section(frame: pd.DataFrame) -> dict:
    """Implementation and reference accuracy and their agreement per task, from the latest run per (task, model,
    dtype, device). Tasks scored by perplexity are left out of the bars (their scale is not a fraction)."""
    if frame.empty or "task" not in frame.columns:
        return {"tasks": [], "metrics": []}
    if "metric" in frame.columns:
        frame = frame[~frame["metric"].astype(str).str.contains("|".join(PERPLEXITY_LIKE))]
    keys = [k for k in ("task", "model", "dtype", "device", "tp_degree") if k in frame.columns]
    latest = frame.sort_values(["utc_time", "run_id"]).drop_duplicates(keys, keep="last")
    metrics = [m for m in ACCURACY_COLUMNS if m in latest.columns and latest[m].notna().any()]
    tasks = []
    for _, row in latest.iterrows():
        label = " ".join(str(row[k]) for k in keys) + (f" ({row['metric']})" if "metric" in row else "")
        values = {m: _clean(row[m]) for m in metrics}
        if any(v is not None for v in values.values()):
            tasks.append({"label": label, "values": values, "run_id": row["run_id"]})
    return {"tasks": tasks, "metrics": metrics}


def bug_matrix_table(frame: pd.DataFrame) -> str:
    """The latest seeded-bug matrix (table "bug_matrix") as an HTML table: bug x task, each cell the task's metric
    with the bug in place; red where it is far worse than the clean canary (the bug is caught there)."""
    latest = _latest_run(frame)
    if latest.empty or "bug" not in latest.columns:
        return '<p class="meta">no bug matrix yet: run python -m granite_bench.accuracy.bug_matrix</p>'
    tasks = list(dict.fromkeys(latest["task"]))
    metrics = dict(zip(latest["task"], latest["metric"]))
    head = "".join(f"<th>{html.escape(f'{t} ({metrics[t]})')}</th>" for t in tasks)
    rows = []
    for bug, part in latest.groupby("bug", sort=False):
        cells = part.set_index("task")
        tds = "".join(f'<td class="{"fail" if cells.loc[t, "far_worse"] else "none"}">{cells.loc[t, "value"]:.3g}</td>'
                      if t in cells.index else "<td></td>" for t in tasks)
        rows.append(f"<tr><th>{html.escape(str(bug))}<br><small>{html.escape(str(part['bug_class'].iloc[0]))}"
                    f"</small></th>{tds}</tr>")
    first = latest.iloc[0]
    return (f'<p class="meta">run {html.escape(str(first["run_id"]))} · {html.escape(str(first["git_sha"])[:10])}'
            f'</p><table class="matrix" id="bug-matrix"><tr><th>bug</th>{head}</tr>{"".join(rows)}</table>')


def _cell(value, digits: int = 3) -> str:
    """A table cell's text: numbers to `digits` significant figures, missing values as '-', all HTML-escaped."""
    value = _clean(value)
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return html.escape(str(value))


BISECT_STEP_COLUMNS = (("step", "step"), ("role", "role"), ("commit", "sha"), ("subject", "subject"),
                       ("judgement", "judgement"), ("ratio", "ratio"), ("95% CI", None), ("evidence", "evidence"),
                       ("s", "seconds"))


def bisect_steps_panel(frame: pd.DataFrame) -> str:
    """The latest `granite-bench bisect` run (table "bisect_steps") as HTML: its answer (first bad commit and
    subject, whether it was confirmed against its parent, or the commits left open), then every probed commit
    with its judgement and evidence; earlier bisect runs in one line each."""
    if frame.empty or "step" not in frame.columns or "run_id" not in frame.columns:
        return ('<p class="meta" id="bisect-none">no bisect runs in this store yet: granite-bench bisect --good REV '
                '--bad REV --results-dir DIR stores its steps here</p>')
    latest = _latest_run(frame).sort_values("step")
    first = latest.iloc[0].to_dict()
    answer_sha = str(first.get("first_bad_sha") or "")
    if answer_sha:
        subject = latest.loc[latest["sha"] == answer_sha, "subject"]
        answer = (f'<b>{html.escape(answer_sha)}</b> is the first bad commit'
                  f'{": " + html.escape(str(subject.iloc[0])) if len(subject) else ""}'
                  f' · confirmed against its parent: {html.escape(str(first.get("answer_confirmed", "not run")))}')
    else:
        answer = (f'no single first bad commit (skipped commits left open): '
                  f'{html.escape(str(first.get("candidates", "")))}')
    head = "".join(f"<th>{name}</th>" for name, _ in BISECT_STEP_COLUMNS)
    rows = []
    for step in latest.to_dict("records"):
        ci = (f"{_cell(step.get('ci_low'))} - {_cell(step.get('ci_high'))}"
              if _clean(step.get("ci_low")) is not None else "-")
        cells = [_cell(step.get("step")), _cell(step.get("role")), _cell(str(step.get("sha", ""))[:12]),
                 _cell(step.get("subject")), _cell(step.get("judgement")), _cell(step.get("ratio")), ci,
                 _cell(step.get("evidence")), _cell(step.get("seconds"), 2)]
        judgement = {"bad": "fail", "good": "pass"}.get(str(step.get("judgement")), "none")
        rows.append(f'<tr class="bisect-{html.escape(str(step.get("judgement")))}">'
                    + "".join(f'<td class="{judgement}">{c}</td>' if name == "judgement" else f"<td>{c}</td>"
                              for (name, _), c in zip(BISECT_STEP_COLUMNS, cells)) + "</tr>")
    earlier = []
    for run_id, part in frame[frame["run_id"] != first["run_id"]].groupby("run_id", sort=False):
        one = part.iloc[0]
        found = one.get("first_bad_sha") or "open: " + str(one.get("candidates", ""))
        earlier.append(f'<li>{html.escape(str(run_id))} · {html.escape(str(one.get("mode", "")))} · '
                       f'{html.escape(str(found))}</li>')
    earlier_html = f'<p class="meta">earlier bisect runs:</p><ul>{"".join(sorted(earlier, reverse=True))}</ul>' \
        if earlier else ""
    return (f'<p class="meta">run {html.escape(str(first["run_id"]))} · mode {html.escape(str(first.get("mode", "")))}'
            f' · good {html.escape(str(first.get("good_sha", ""))[:12])} .. bad '
            f'{html.escape(str(first.get("bad_sha", ""))[:12])} · {_cell(first.get("commits_in_range"))} commits in '
            f'range · {len(latest)} steps</p><p id="bisect-answer">{answer}</p>'
            f'<table class="matrix" id="bisect-steps" data-rows="{len(latest)}"><tr>{head}</tr>{"".join(rows)}</table>'
            f'{earlier_html}')


SUSPECT_FRACTIONS = ROOFLINE_METRICS
MAX_SUSPECT_ROWS = 30


def ceiling_suspect_panel(frame: pd.DataFrame) -> str:
    """Perf rows flagged `ceiling_suspect` (a roofline fraction above 100%, or of no measurable ceiling: the ceiling
    was measured too low, so the fraction cannot be read), newest first, with the fractions named, the ceilings they
    were taken against, the CPU kind and the host load; or a line saying none is flagged."""
    fractions = [m for m in SUSPECT_FRACTIONS if m in frame.columns]
    if frame.empty or not fractions:
        return ('<p class="meta" id="suspect-none">no perf rows with roofline ceilings in this store yet: '
                'granite-bench perf stores them</p>')
    frame = with_suspect_flags(frame, fractions)
    flagged = frame[frame["ceiling_suspect"]]
    if flagged.empty:
        return (f'<p class="meta" id="suspect-none">no perf row is flagged ceiling_suspect '
                f'({len(frame)} rows checked): every roofline fraction is within its measured ceiling</p>')
    flagged = flagged.sort_values(["utc_time", "run_id"], ascending=False)
    shown = flagged.head(MAX_SUSPECT_ROWS)
    head = "".join(f"<th>{name}</th>" for name in ("run", "commit", "point", "impl", "cpu", "suspect fractions",
                                                   "ceilings (best): read · matvec GB/s · matmul GFLOP/s",
                                                   "load (1 min)"))
    rows = []
    for row in shown.to_dict("records"):
        names = [n for n in str(row.get("ceiling_suspect_of") or "").split(",") if n]
        fractions = ", ".join(f"{n} {_clean(row.get(n)) * 100:.0f}%" if _clean(row.get(n)) is not None
                              else f"{n} (no ceiling)" for n in names) or "-"
        ceilings = " · ".join(_cell(row.get(f"ceiling_{c}_best", row.get(f"ceiling_{c}")))
                              for c in ("read_gbs", "matvec_gbs", "matmul_gflops"))
        load = "-".join(_cell(row.get(k), 2) for k in ("load_avg_1m_start", "load_avg_1m_end") if k in row)
        cpu = row.get("cpu_kind") or row.get("machine") or row.get("machine_fingerprint")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in (
            _cell(row.get("run_id")), _cell(str(row.get("git_sha", ""))[:10]), html.escape(point_label(row)),
            _cell(row.get("impl")), _cell(cpu), html.escape(fractions), ceilings, load or "-")) + "</tr>")
    more = f" (newest {len(shown)} shown)" if len(flagged) > len(shown) else ""
    return (f'<p class="meta" id="suspect-count">{len(flagged)} of {len(frame)} perf rows flagged{more}: rerun those '
            f'points on a quieter machine before reading their fractions</p>'
            f'<table class="matrix" id="ceiling-suspects" data-rows="{len(shown)}"><tr>{head}</tr>{"".join(rows)}'
            f'</table>')


def with_suspect_flags(frame: pd.DataFrame, fractions: list[str]) -> pd.DataFrame:
    """The rows with `ceiling_suspect` / `ceiling_suspect_of` filled in where they were stored without them (rows
    from before the flag): suspect when a fraction is above 100% or has no finite value (no measurable ceiling)."""
    frame = frame.copy()
    values = frame[fractions].astype(float)
    derived = values.gt(1.0) | (values.notna() & ~values.apply(lambda c: c.map(math.isfinite)).astype(bool))
    derived_of = derived.apply(lambda row: ",".join(c for c in fractions if row[c]), axis=1)
    stored = frame["ceiling_suspect"] if "ceiling_suspect" in frame.columns else pd.Series(pd.NA, index=frame.index)
    missing = stored.isna()
    frame["ceiling_suspect"] = stored.where(~missing, derived.any(axis=1)).astype(bool)
    of = frame["ceiling_suspect_of"] if "ceiling_suspect_of" in frame.columns else pd.Series(pd.NA, index=frame.index)
    frame["ceiling_suspect_of"] = of.where(~missing, derived_of)
    return frame


def latest_comparison(frame: pd.DataFrame) -> dict:
    if frame.empty:
        return {"rows": []}
    latest = _latest_run(frame)
    first = latest.iloc[0]
    shown = ["kind", "group", "metric", "baseline_text", "candidate_text", "ratio", "ci_low", "ci_high",
             "p_adjusted", "verdict"]
    rows = [{c: _clean(r.get(c)) for c in shown} for r in latest.to_dict("records")]
    return {"run_id": first["run_id"], "utc_time": first["utc_time"],
            "baseline": f"{first.get('baseline_spec', '')} {str(first.get('baseline_sha', ''))[:10]}".strip(),
            "candidate": f"{first.get('candidate_spec', '')} {str(first.get('candidate_sha', ''))[:10]}".strip(),
            "regressed": bool(first.get("regressed", False)), "rows": rows}


def gate_power_section(frame: pd.DataFrame) -> dict:
    """The timing gate's measured power per gate label (table gate_power): detection rate per slowdown level with
    Wilson intervals (level 0: false alarms), the prefill-only arm, and the latest A/A resampled false-alarm rate."""
    if frame.empty or "kind" not in frame.columns:
        return {"gates": []}
    from ..gate.calibrate import AA, power_table
    comparisons = frame[frame["kind"] != AA]
    table = power_table(comparisons) if len(comparisons) else pd.DataFrame()
    gates = []
    for gate in sorted(frame["gate"].unique()):
        rows = table[table["gate"] == gate] if len(table) else table
        points = [{c: _clean(r[c]) for c in ("kind", "level", "comparisons", "detected", "rate", "ci_low",
                                            "ci_high", "median_gate_minutes")} for r in rows.to_dict("records")]
        aa = frame[(frame["gate"] == gate) & (frame["kind"] == AA)]
        aa_row = _latest_run(aa).iloc[0].to_dict() if len(aa) else {}
        gates.append({"gate": gate, "points": points,
                      "aa": {k: _clean(aa_row.get(k)) for k in ("aa_false_alarms", "aa_resamples", "aa_rate",
                                                                "aa_ci_high")} if aa_row else None})
    return {"gates": gates}


# ----- the page --------------------------------------------------------------------------------------------------

def dashboard_data(store: ResultStore, seed: int = 0) -> dict:
    """Everything the page shows, as JSON-ready data; unreadable files are listed, not fatal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # skipped files are listed on the page from the store's skip log
        runs = store.runs()
        perf = _read(store, "perf_summary")
        data = {
            "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "store": str(store.root),
            "runs": len(runs),
            "commits": int(runs["git_sha"].nunique()) if len(runs) else 0,
            "parity": parity_matrix(_read(store, "parity_summary")),
            "perf_trends": perf_trends(perf, seed=seed),
            "perf_grid": perf_grid(perf),
            "accuracy": accuracy_section(_read(store, "eval_summary")),
            "comparison": latest_comparison(_read(store, "comparisons")),
            "gate_power": gate_power_section(_read(store, "gate_power")),
        }
        data["bug_matrix_html"] = bug_matrix_table(_read(store, "bug_matrix"))
        data["bisect_html"] = bisect_steps_panel(_read(store, "bisect_steps"))
        data["ceiling_suspect_html"] = ceiling_suspect_panel(perf)
        data["load_html"] = load_sweep_panel(_read(store, "load_points"))
    data["skipped"] = sorted(set(store.skip_log.values()))
    return data


def expected_marks(data: dict) -> dict[str, int]:
    """Marks each chart must draw, by chart id (what the browser test checks against data-drawn)."""
    grid = data["perf_grid"]
    counts = {
        "parity-matrix": len(data["parity"]["cells"]),
        "perf-ratios": sum(v is not None for b in grid["ratios"] for v in b["values"].values()),
        "perf-roofline": sum(v is not None for b in grid["roofline"] for v in b["values"].values()),
        "accuracy": sum(v is not None for t in data["accuracy"]["tasks"] for v in t["values"].values()),
        "comparison": len(data["comparison"]["rows"]),
        "gate-power": sum(len(g["points"]) for g in data["gate_power"]["gates"]),
    }
    for i, chart in enumerate(data["perf_trends"]):
        counts[f"trend-{i}"] = len(chart["points"])
    return counts


def json_safe(obj):
    """obj with NaN/inf/NA turned into None and numpy scalars into Python ones, all the way down."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return _clean(obj)


def render_page(data: dict) -> str:
    data = json_safe(data)
    bug_matrix = data.pop("bug_matrix_html", "")  # already HTML (escaped); not part of the script's data
    bisect = data.pop("bisect_html", "")
    ceiling_suspects = data.pop("ceiling_suspect_html", "")
    load_sweeps = data.pop("load_html", "")
    counts = expected_marks(data)
    trend_divs = "".join(f'<div class="chart trend" id="trend-{i}" data-chart="trend" data-index="{i}" '
                         f'data-expected="{counts[f"trend-{i}"]}"></div>' for i in range(len(data["perf_trends"])))
    if not trend_divs:
        trend_divs = ('<div class="chart trend" id="trend-none" data-chart="trend" data-index="-1" '
                      'data-expected="0"></div>')
    skipped = "".join(f'<p class="warn">skipped: {html.escape(s)}</p>' for s in data["skipped"])
    summary = (f"{data['runs']} runs over {data['commits']} commits in {html.escape(data['store'])} · "
               f"built {data['generated']}")
    # "</" cannot end the script element early once escaped this way; JSON.parse reads it back unchanged.
    payload = json.dumps(data, default=str, allow_nan=False).replace("</", "<\\/")
    page = string.Template((ASSETS / PAGE_TEMPLATE).read_text(encoding="utf-8"))
    return page.substitute(summary=summary, cp_alpha=CHANGE_POINT_ALPHA, skipped=skipped,
                           n_parity=counts["parity-matrix"], trend_divs=trend_divs, n_ratios=counts["perf-ratios"],
                           n_roofline=counts["perf-roofline"], n_accuracy=counts["accuracy"],
                           n_comparison=counts["comparison"], n_gate_power=counts["gate-power"],
                           bug_matrix=bug_matrix, bisect=bisect, ceiling_suspects=ceiling_suspects,
                           load_sweeps=load_sweeps,
                           data=payload)


def build_dashboard(store: ResultStore, out_dir: Path | str, seed: int = 0) -> Path:
    """Write out_dir/index.html and out_dir/assets/; returns the page's path."""
    out = Path(out_dir)
    (out / "assets").mkdir(parents=True, exist_ok=True)
    data = dashboard_data(store, seed=seed)
    for name in ASSET_FILES:
        shutil.copyfile(ASSETS / name, out / "assets" / name)
    page = out / "index.html"
    tmp = out / ".index.html.tmp"
    tmp.write_text(render_page(data), encoding="utf-8")
    tmp.replace(page)
    return page
