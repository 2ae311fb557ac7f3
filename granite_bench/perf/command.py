"""`granite-bench perf` end to end: expand the grid, skip stored points, measure the rest one at a time, store each
point as soon as it is done, print the summary.

Storage: every point is its own run (its own run id and metadata): one perf_samples and one perf_summary file,
committed together (ResultStore.write_run), so readers see both or neither. A later sweep skips a point whose key
has a perf_summary row from the same git commit on the same machine measured by the same code: every row carries
`code_fingerprint` (all of the package's Python files, committed or not, and the torch/transformers versions; the
dirty flag is in the run metadata), and a point stored by other code is measured again, which the header says
(`--fresh` measures again regardless). Shards write disjoint points under their own run ids, so their files union
without coordination.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from .grid import GridSpec, PerfPoint, parse_shard, shard_points

SAMPLES_TABLE = "perf_samples"
SUMMARY_TABLE = "perf_summary"


@dataclass
class PerfArgs:
    spec: GridSpec
    suite: str = "default"
    shard: str | None = None
    results_dir: Path | None = Path("results")
    fresh: bool = False
    seed: int = 0
    stored_rows: list = field(default_factory=list)


# -- the store -------------------------------------------------------------------------------------------------
def _sql(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def stored_summaries(store, git_sha: str, fingerprint: str):
    """perf_summary rows of this commit and machine (a DataFrame, possibly empty)."""
    import pandas as pd
    if SUMMARY_TABLE not in store.tables():
        return pd.DataFrame()
    return store.query(f"SELECT * FROM {SUMMARY_TABLE} WHERE git_sha = {_sql(git_sha)} "
                       f"AND machine_fingerprint = {_sql(fingerprint)}")


def stored_points(store, points: list[PerfPoint], code: str) -> tuple[dict[str, list[dict]], set[str]]:
    """({point key: summary rows} of the points stored for this commit and machine by this code, {keys of points
    stored there only by other code}): rows without a code fingerprint were measured by code that kept none."""
    from ..results.metadata import default_repo_dir, git_state, machine_description
    sha, _ = git_state(default_repo_dir())
    stored = stored_summaries(store, sha, machine_description()[0])
    wanted = {p.key for p in points}
    done: dict[str, list[dict]] = {}
    other: set[str] = set()
    for row in stored.to_dict("records") if len(stored) else []:
        if row["point_key"] not in wanted:
            continue
        if row.get("code_fingerprint") == code:
            done.setdefault(row["point_key"], []).append(row)
        else:
            other.add(row["point_key"])
    return done, other - set(done)


def point_metadata(point: PerfPoint, args: PerfArgs, extra: dict):
    from ..results import collect_run_metadata
    config = {"point": point.columns(), "rounds": args.spec.rounds, "warmup": args.spec.warmup,
              "baselines": args.spec.baselines, "suite": args.suite, "output_logits": False, **extra}
    return collect_run_metadata(suite=f"perf/{args.suite}", device=point.device, dtype=point.dtype, config=config,
                                seed=args.seed)


def store_point(store, point: PerfPoint, args: PerfArgs, samples: list[dict], summary: list[dict],
                extra: dict) -> list[Path]:
    """Samples and summary of one point committed as one run: readers see both or neither."""
    from ..results.metadata import require_directions
    meta = point_metadata(point, args, extra)
    return store.write_run(meta, {SAMPLES_TABLE: require_directions(SAMPLES_TABLE, samples),
                                  SUMMARY_TABLE: require_directions(SUMMARY_TABLE, summary)})


# -- the command -----------------------------------------------------------------------------------------------
def run_perf_command(args: PerfArgs, console, progress_bar) -> list[dict]:
    """Measure the grid (or one shard of it); returns the summary rows of every point of the shard."""
    from ..fingerprint import package_code_fingerprint
    from ..results.store import ResultStore
    from .sweep import SweepSession
    from .timing import set_threads

    spec = args.spec.validate()
    index, count = parse_shard(args.shard)
    grid = spec.points()
    points = shard_points(grid, index, count)
    store = ResultStore(args.results_dir) if args.results_dir is not None else None
    code = package_code_fingerprint()
    done, stale = stored_points(store, points, code) if store is not None and not args.fresh else ({}, set())
    todo = [p for p in points if p.key not in done]
    shard_text = f" · shard {index}/{count}" if count > 1 else ""
    stale_text = f" · {len(stale)} stored by other code: re-running" if stale else ""
    model = escape(str(spec.model))
    console.print(f"[bold]perf[/] {model}{f' (first {spec.layers} layers)' if spec.layers else ''} · "
                  f"{spec.device} · {len(grid)} grid points{shard_text} · {len(points) - len(todo)} already stored"
                  f"{stale_text} · {len(todo)} to run · {spec.new_tokens} new tokens · {spec.rounds} rounds "
                  f"(+{spec.warmup} warm-up) · baselines: {', '.join(spec.baselines) or 'none'}")
    threads = set_threads(spec.threads)
    warn_if_busy(console, threads)
    results: dict[str, list[dict]] = dict(done)
    session = SweepSession(spec, threads)
    interrupted = False
    try:
        if todo:
            with progress_bar() as progress:
                task = progress.add_task("points", total=len(todo))
                for k, point in enumerate(todo, 1):
                    progress.update(task, description=f"point {k} of {len(todo)}: {point.label}")
                    samples, summary = session.measure(point)
                    summary = [{**row, "code_fingerprint": code} for row in summary]
                    if store is not None:
                        store_point(store, point, args, samples, summary, {"threads": threads})
                    results[point.key] = summary
                    progress.advance(task)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        session.close()
    rows = [row for p in points for row in results.get(p.key, [])]
    render(console, rows)
    finished = sum(1 for p in todo if p.key in results)
    if interrupted:
        console.print(f"[bold yellow]interrupted[/] after {finished} of {len(todo)} points; every finished point is "
                      f"stored: run the same command again to resume")
        raise KeyboardInterrupt
    if store is not None and todo:
        console.print(f"results: {len(todo)} points written to {store.root}/{{{SAMPLES_TABLE},{SUMMARY_TABLE}}}",
                      markup=False)
    return rows


def warn_if_busy(console, threads: dict) -> None:
    """Warn when other work already keeps the cores perf's threads need busy: every timing will be inflated."""
    import os
    try:
        load = os.getloadavg()[0]  # /proc/loadavg's 1-minute average
    except (AttributeError, OSError):
        return
    line = busy_warning(load, threads["cores_available"], threads["torch_threads"])
    if line:
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)


def busy_warning(load: float, cores: int, threads: int) -> str | None:
    """A warning when the 1-minute load average exceeds the cores left over by perf's own threads (the other work
    will take cores from the timed threads), else None."""
    spare = cores - threads
    if load <= spare:
        return None
    advice = ("rerun with --threads 1 (fewer threads lose less to the other work) or on a quieter machine"
              if threads > 1 else "rerun on a quieter machine")
    return (f"host load average {load:.1f} (1 min) exceeds the {max(spare, 0)} of {cores} cores that perf's "
            f"{threads} torch thread{'s' if threads != 1 else ''} leave free: other work competes for the cores, so "
            f"latencies and throughput will be inflated (on a busy 2-core host the default threads measured 10-14x "
            f"worse than --threads 1); {advice}")


# -- the summary table -------------------------------------------------------------------------------------------
def _num(value, digits: int = 3, scale: float = 1.0, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    value = float(value) * scale
    return f"{value:.0%}" if pct else f"{value:.{digits}g}"


def _frac(row: dict, column: str) -> str:
    """A roofline fraction as a percentage, marked '!' when it is one the row's ceiling_suspect_of names."""
    text = _num(row.get(column), pct=True)
    return text + "!" if column in str(row.get("ceiling_suspect_of") or "").split(",") else text


def _threads_note(row: dict) -> str:
    threads = row.get("ceiling_threads")
    return f", {int(threads)} threads" if threads is not None and not (isinstance(threads, float)
                                                                       and math.isnan(threads)) else ""


def _cpu_ceiling_note(row: dict) -> str:
    value = row.get("ceiling_matvec_gbs_cpu_best")
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"; matrix-vector in CPU time {value:.1f} GB/s"


def _point_label(row: dict, varying: set) -> str:
    parts = []
    if "dtype" in varying:
        parts.append({"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(row["dtype"], row["dtype"]))
    if "compiled" in varying:
        parts.append("compiled" if row["compiled"] else "eager")
    parts += [f"tp{row['tp']}", f"b{row['batch_size']}", f"ctx{row['bucket']}"]
    return " ".join(parts)


def cpu_kinds(rows: list[dict]) -> list[str]:
    """One line per kind of CPU the rows were measured on ('cpu: <model> · flags ... · kernels <kind>'), emulation
    named; rows from before the CPU was recorded give none."""
    lines = []
    for r in rows:
        if not r.get("cpu_kind"):
            continue
        flags = r.get("cpu_flags") or "none of avx2/avx512f/avx512_bf16/amx_bf16"
        line = f"cpu: {r.get('cpu_model', '?')} · flags {flags} · kernels {r['cpu_kind']}"
        if r.get("transparent_huge_pages"):
            line += f" · transparent huge pages {r['transparent_huge_pages']}"
        if r.get("cpu_emulated"):
            line += (" · EMULATED: a smaller CPU's kernels on this machine's memory system and clock, not a "
                     "measurement of that CPU")
        if line not in lines:
            lines.append(line)
    return lines


def render(console, rows: list[dict]) -> None:
    if not rows:
        console.print("no points measured")
        return
    for kind in cpu_kinds(rows):
        console.print(kind, markup=False)
    seen = set()
    for r in rows:  # measured in this run, or stored with the points it skipped
        if (r["device"], r["dtype"]) not in seen:
            seen.add((r["device"], r["dtype"]))
            best = {k: r.get(f"ceiling_{k}_best", r[f"ceiling_{k}"]) for k in ("read_gbs", "matvec_gbs",
                                                                                 "matmul_gflops")}
            console.print(f"ceilings {r['device']} {r['dtype']}: plain read {best['read_gbs']:.1f} GB/s · "
                          f"matrix-vector {best['matvec_gbs']:.1f} GB/s · matmul {best['matmul_gflops']:.0f} "
                          f"GFLOP/s (best call; medians {r['ceiling_read_gbs']:.1f} · {r['ceiling_matvec_gbs']:.1f} · "
                          f"{r['ceiling_matmul_gflops']:.0f}){_threads_note(r)}{_cpu_ceiling_note(r)}")
    varying = {name for name in ("dtype", "compiled") if len({r[name] for r in rows}) > 1}
    fixed = [f"{rows[0]['dtype']}" if "dtype" not in varying else "",
             ("compiled" if rows[0]["compiled"] else "eager") if "compiled" not in varying else ""]
    impls = [r for r in rows if r["impl"] == "granite"]
    table = Table(title=f"implementation ({' '.join(f for f in fixed if f)}; latencies p50 ms) and "
                        f"implementation/HF ratios (< 1: faster than HF); cpu: the same in process CPU time",
                  title_justify="left")
    for column in ("point", "TTFT", "TPOT", "TPOT p99", "tok/s", "TTFT/HFe", "TPOT/HFe", "TPOT/HFs", "GB/s",
                   "%matvec", "%read", "%matmul", "cpu TPOT", "cpu /HFe", "cpu %mv", "compile s", "RSS MiB", "pad"):
        table.add_column(column, justify="right", no_wrap=True)
    for r in impls:
        table.add_row(_point_label(r, varying), _num(r["ttft_p50_ms"]), _num(r["tpot_p50_ms"]),
                      _num(r["tpot_p99_ms"]), _num(r["output_tok_s"]), _num(r.get("ttft_ratio_hf_eager"), 2),
                      _num(r.get("tpot_ratio_hf_eager"), 2), _num(r.get("tpot_ratio_hf_static"), 2),
                      _num(r["decode_gbs"]), _frac(r, "decode_frac_matvec"), _frac(r, "decode_frac_read"),
                      _frac(r, "prefill_frac_matmul"), _num(r.get("tpot_cpu_p50_ms")),
                      _num(r.get("tpot_cpu_ratio_hf_eager"), 2), _frac(r, "decode_frac_matvec_cpu"),
                      _num(r.get("compile_seconds_total"), 3) if r["compiled"] else "-",
                      _num(r["peak_rss_mb"], 4), _num(r["padding_waste_prefill"], pct=True))
    console.print(table)
    render_kv_cache(console, impls)
    baselines = [r for r in rows if r["impl"] != "granite"]
    if baselines:
        hf = Table(title="HF Transformers generate (same weights, same process, interleaved; p50 ms)",
                   title_justify="left")
        for column in ("point", "impl", "TTFT", "TPOT", "TPOT p99", "tok/s", "GB/s", "%matvec", "cpu TPOT",
                       "cpu %mv"):
            hf.add_column(column, justify="right", no_wrap=True)
        for r in baselines:
            hf.add_row(_point_label(r, varying), r["impl"], _num(r["ttft_p50_ms"]), _num(r["tpot_p50_ms"]),
                       _num(r["tpot_p99_ms"]), _num(r["output_tok_s"]), _num(r["decode_gbs"]),
                       _frac(r, "decode_frac_matvec"), _num(r.get("tpot_cpu_p50_ms")),
                       _frac(r, "decode_frac_matvec_cpu"))
        console.print(hf)
    suspect = [f"{_point_label(r, varying)} {r['impl']}: {r['ceiling_suspect_of']}" for r in rows
               if r.get("ceiling_suspect")]
    if suspect:
        console.print(f"[yellow]warning:[/] a fraction above 100% (marked !) or of no measurable ceiling means the "
                      f"ceiling was measured too low (a busier machine while it was measured): "
                      f"{'; '.join(suspect)}. Rerun on a quieter machine before reading those fractions.")
    loads = [r[k] for r in impls for k in ("load_avg_1m_start", "load_avg_1m_end")
             if r.get(k) is not None and not math.isnan(r[k])]
    if loads:
        threads = sorted({int(r["torch_threads"]) for r in impls if r.get("torch_threads") is not None})
        console.print(f"host load average (1 min) while measuring: {min(loads):.1f}-{max(loads):.1f} on "
                      f"{impls[0].get('cores_available', '?')} cores; torch threads {threads}: compare ratios "
                      f"measured in one run, not absolute times across runs")


def kv_cache_layouts(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(row, {layer kind: layers, slots, bytes_per_slot, bytes}) once per built cache (dtype, TP degree, batch size,
    sequence length) of the implementation rows, for caches with more than full-attention layers (sliding ones)."""
    import json
    seen, out = set(), []
    for r in rows:
        text = r.get("kv_cache_json")
        key = (r["dtype"], r["tp"], r["batch_size"], r["seq_len"])
        if not isinstance(text, str) or key in seen:
            continue
        layout = json.loads(text)
        if set(layout) - {"full_attention"}:
            seen.add(key)
            out.append((r, layout))
    return out


def render_kv_cache(console, rows: list[dict]) -> None:
    """The KV cache as allocated per layer kind (a sliding layer's slots stay W at any sequence length)."""
    layouts = kv_cache_layouts(rows)
    if not layouts:
        return
    table = Table(title="KV cache per layer kind (as allocated, one rank; K and V, every row of the batch)",
                  title_justify="left")
    for column in ("dtype", "tp", "batch", "seq len", "layer kind", "layers", "slots/layer", "bytes/slot", "bytes",
                   "MiB"):
        table.add_column(column, justify="right", no_wrap=True)
    for r, layout in layouts:
        for kind, entry in sorted(layout.items()):
            table.add_row(str(r["dtype"]), str(r["tp"]), str(r["batch_size"]), str(r["seq_len"]), kind,
                          str(entry["layers"]), str(entry["slots"]), str(entry["bytes_per_slot"]),
                          str(entry["bytes"]), f"{entry['bytes'] / 2**20:.2f}")
    console.print(table)


# -- command-line wiring helpers (kept here so cli.py stays thin) -------------------------------------------------
def parse_names(text: str | None) -> list[str] | None:
    """'a,b' -> ['a', 'b']; 'none' -> []; None -> None (keep the suite's)."""
    if text is None:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    return [] if names == ["none"] else names


def build_spec(suite_data: dict, **overrides) -> GridSpec:
    """The suite's grid with command-line overrides applied (None = keep the suite's value)."""
    from .grid import spec_from_suite, with_overrides
    return with_overrides(spec_from_suite(suite_data), **overrides)
