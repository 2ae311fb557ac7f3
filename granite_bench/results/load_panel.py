"""The dashboard's load-sweep panel (table "load_points" of `granite-bench load`): latency against output throughput,
one line per sweep (its levels in order), drawn as inline SVG, and the latest sweep's levels as a table."""

from __future__ import annotations

import html
import math

import pandas as pd

MAX_SWEEPS = 4
WIDTH, HEIGHT, MARGIN = 560, 300, 48
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
TABLE_COLUMNS = (("level", None), ("ok", "requests_ok"), ("failed", "requests_failed"),
                 ("out tok/s", "output_throughput"), ("TTFT p50 ms", "ttft_ms_p50"), ("TTFT p99 ms", "ttft_ms_p99"),
                 ("ITL p50 ms", "itl_ms_p50"), ("E2E p50 ms", "e2e_ms_p50"), ("E2E p99 ms", "e2e_ms_p99"))


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _level(row: dict) -> str:
    if row.get("mode") == "rate":
        rate = _number(row.get("rate"))
        return "inf/s" if rate is None else f"{rate:g}/s"
    return str(row.get("concurrency"))


def _sweeps(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The latest MAX_SWEEPS runs, newest first: (label, its rows in level order)."""
    runs = frame.sort_values("utc_time", ascending=False)["run_id"].drop_duplicates().head(MAX_SWEEPS)
    out = []
    for run_id in runs:
        rows = frame[frame["run_id"] == run_id]
        rows = rows.sort_values("rate" if rows["mode"].iloc[0] == "rate" else "concurrency")
        first = rows.iloc[0]
        out.append((f"{first['endpoint']} · {first['served_model']} · {first['api']} · {first['mode']} · "
                    f"{str(first['utc_time'])[:16]}", rows))
    return out


def _svg(sweeps: list[tuple[str, pd.DataFrame]], metric: str) -> str:
    points = [(_number(r["output_throughput"]), _number(r[metric])) for _, rows in sweeps
              for r in rows.to_dict("records")]
    points = [(x, y) for x, y in points if x is not None and y is not None]
    if not points:
        return ""
    x_max = max(x for x, _ in points) * 1.05 or 1.0
    y_max = max(y for _, y in points) * 1.05 or 1.0

    def at(x: float, y: float) -> str:
        return (f"{MARGIN + x / x_max * (WIDTH - 2 * MARGIN):.1f},"
                f"{HEIGHT - MARGIN - y / y_max * (HEIGHT - 2 * MARGIN):.1f}")

    parts = [f'<line x1="{MARGIN}" y1="{HEIGHT - MARGIN}" x2="{WIDTH - MARGIN}" y2="{HEIGHT - MARGIN}" '
             f'stroke="#888"/>',
             f'<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{HEIGHT - MARGIN}" stroke="#888"/>',
             f'<text x="{WIDTH / 2}" y="{HEIGHT - 10}" text-anchor="middle">output tokens/s (max {x_max / 1.05:.4g})'
             f'</text>', f'<text x="12" y="{MARGIN - 14}">{html.escape(metric)} (max {y_max / 1.05:.4g})</text>']
    marks = 0
    for i, (label, rows) in enumerate(sweeps):
        colour = COLOURS[i % len(COLOURS)]
        line = [(r, _number(r["output_throughput"]), _number(r[metric])) for r in rows.to_dict("records")]
        line = [(r, x, y) for r, x, y in line if x is not None and y is not None]
        if len(line) > 1:
            parts.append(f'<polyline fill="none" stroke="{colour}" points="{" ".join(at(x, y) for _, x, y in line)}"/>')
        for r, x, y in line:
            marks += 1
            parts.append(f'<circle class="load-point" cx="{at(x, y).split(",")[0]}" cy="{at(x, y).split(",")[1]}" '
                         f'r="4" fill="{colour}"><title>{html.escape(label)} · {html.escape(_level(r))}: '
                         f'{x:.4g} tok/s, {y:.4g} ms</title></circle>')
    return (f'<svg class="load-chart" data-metric="{html.escape(metric)}" data-marks="{marks}" width="{WIDTH}" '
            f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img">{"".join(parts)}</svg>')


def _cell(value) -> str:
    number = _number(value)
    if number is not None and not isinstance(value, (bool, int)):
        return f"{number:.4g}"
    return html.escape("-" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value))


def load_sweep_panel(frame: pd.DataFrame) -> str:
    """HTML: E2E and TTFT p50 against output throughput for the latest sweeps, and the latest sweep's levels."""
    needed = {"run_id", "utc_time", "mode", "output_throughput", "e2e_ms_p50", "ttft_ms_p50"}
    if frame.empty or not needed <= set(frame.columns):
        return ('<p class="meta" id="load-none">no load sweeps in this store yet: granite-bench load --endpoint URL '
                '--results-dir DIR stores them here</p>')
    sweeps = _sweeps(frame)
    legend = "".join(f'<li style="color:{COLOURS[i % len(COLOURS)]}">{html.escape(label)}</li>'
                     for i, (label, _) in enumerate(sweeps))
    head = "".join(f"<th>{name}</th>" for name, _ in TABLE_COLUMNS)
    latest = sweeps[0][1].to_dict("records")
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_level(r)) if column is None else _cell(r.get(column))}</td>"
                                    for _, column in TABLE_COLUMNS) + "</tr>" for r in latest)
    return (f'<ul class="meta">{legend}</ul>{_svg(sweeps, "e2e_ms_p50")}{_svg(sweeps, "ttft_ms_p50")}'
            f'<table class="matrix" id="load-latest" data-rows="{len(latest)}"><tr>{head}</tr>{body}</table>')
