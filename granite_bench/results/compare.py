"""`granite-bench compare`: a candidate against a baseline; deterministic results gate exactly, timings statistically.

A side is stored runs (run ids, or unique prefixes, comma-separated) or code: a git ref, HEAD, `worktree` (the files
as they are) or a folder holding granite_bench/.

- Deterministic results (parity_summary, eval_summary): for code, the store's runs of that commit when the tree is
  clean and the store has them, else the deterministic commands run in that tree into a scratch store. Rows are
  matched by their key columns; a worse verdict, a lower greedy match or accuracy, or an error metric grown past
  `error_growth` times the baseline fails.
- Timings: only when both sides are code, measured side by side (ab.py), gated by stats.gate_timings. Timings of
  stored runs were not measured side by side and are not compared.

The comparison is stored in the `comparisons` table, one row per line of the printed table.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from granite_bench.results import ab, stats
from granite_bench.results.metadata import metadata_column_names
from granite_bench.results.store import ResultStore

# Verdicts, mildest first; the worst verdict over a group's rows is the group's verdict.
SAME, BETTER, CHANGED, NEW, MISSING, REGRESSION = "same", "better", "changed", "new", "missing", "regression"
SEVERITY = {stats.REPORTED: 0, stats.PASS: 0, SAME: 0, BETTER: 1, stats.FASTER: 1, CHANGED: 2, NEW: 3, MISSING: 3,
            REGRESSION: 9}

DEFAULT_ERROR_GROWTH = 2.0     # an error metric fails when it grows past this factor ...
ERROR_ABS_FLOOR = 1e-6         # ... and by more than this (fp32 errors near zero jitter with any reordering)

FAIL_SCOPES = ("all", "deterministic")
MAX_REPS = 200                 # decode steps per trial: positions stay inside the probe's 256-token cache

# The commands that give a tree's deterministic results; each gets --results-dir and runs only if the tree has it.
DETERMINISTIC_COMMANDS = ("parity", "eval")

# Per deterministic table: the columns that say which result a row is (those present are used).
KEY_COLUMNS = {
    "parity_summary": ["suite", "model", "dtype", "device", "tp_degree", "compiled", "prompt"],
    "eval_summary": ["suite", "model", "dtype", "device", "tp", "tp_degree", "task", "num_fewshot", "limit"],
}
# A row's group in the printed table: the key without the per-item column.
ITEM_COLUMNS = {"parity_summary": ["prompt"], "eval_summary": []}
# Result columns compared, by name: the first list that matches decides (substrings of the lower-cased name).
NOT_COMPARED = ("stderr", "position", "seconds", "time", "count", "len", "rounds", "threshold", "tol", "difference")
LOWER_IS_BETTER = ("err", "diff", "delta", "kl", "abs", "perplexity")
HIGHER_IS_BETTER = ("passed", "acceptable", "acc", "agreement", "match", "overlap")


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


@dataclass
class Side:
    spec: str
    run_ids: list[str] = field(default_factory=list)   # stored runs giving its deterministic rows
    tree: ab.CodeTree | None = None
    source: str = ""                                     # where its deterministic rows came from
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)


@dataclass
class Comparison:
    baseline: Side
    candidate: Side
    rows: list[Row]
    notes: list[str]
    settings: dict

    @property
    def regressed(self) -> bool:
        return any(r.verdict == REGRESSION for r in self.rows)

    def fails(self, scope: str = "all") -> bool:
        """Whether to exit 1: any regression ('all'), or only an exact-gate one ('deterministic')."""
        if scope not in FAIL_SCOPES:
            raise CompareError(f"--fail-on must be one of {', '.join(FAIL_SCOPES)}, got {scope!r}")
        kinds = {"all": ("deterministic", "timing"), "deterministic": ("deterministic",)}[scope]
        return any(r.verdict == REGRESSION and r.kind in kinds for r in self.rows)


# ----- deterministic rows ----------------------------------------------------------------------------------------

def metric_direction(column: str) -> str | None:
    """'higher', 'lower' or None (not compared) for a result column name."""
    name = column.lower()
    if any(part in name for part in NOT_COMPARED) or name.startswith("n_") or name.endswith("_s"):
        return None
    if any(part in name for part in LOWER_IS_BETTER):
        return "lower"
    if any(part in name for part in HIGHER_IS_BETTER):
        return "higher"
    return None


def compared_metrics(frame: pd.DataFrame, keys: list[str]) -> dict[str, str]:
    """Columns to compare: booleans and numbers with a known direction, outside the keys and run metadata."""
    skip = set(keys) | set(metadata_column_names()) | {"run_passed"}
    found = {}
    for column in frame.columns:
        if column in skip:
            continue
        series = frame[column]
        if not (pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series)):
            continue
        direction = metric_direction(column)
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
    keys = [k for k in KEY_COLUMNS.get(table, []) if k in base.columns and k in cand.columns]
    items = [k for k in ITEM_COLUMNS.get(table, []) if k in keys]
    groups = [k for k in keys if k not in items]
    base, cand = latest_per_key(base, keys), latest_per_key(cand, keys)
    metrics = compared_metrics(base, keys)
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


# ----- resolving sides -------------------------------------------------------------------------------------------

def match_run_ids(store: ResultStore, spec: str) -> list[str] | None:
    """Run ids named by spec (comma-separated ids or unique prefixes); None when some part names no stored run."""
    runs = store.runs()
    known = list(runs["run_id"]) if len(runs) else []
    found = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        hits = [r for r in known if r == part] or [r for r in known if r.startswith(part)]
        if len(hits) != 1:
            if len(hits) > 1:
                raise CompareError(f"{part!r} matches {len(hits)} stored runs: give more of the run id")
            return None
        found.append(hits[0])
    return found or None


def read_runs(store: ResultStore, run_ids: list[str]) -> dict[str, pd.DataFrame]:
    frames = {}
    for table in KEY_COLUMNS:
        if table not in store.tables():
            continue
        frame = store.read(table)
        if len(frame) and "run_id" in frame.columns:
            frame = frame[frame["run_id"].isin(run_ids)]
            if len(frame):
                frames[table] = frame.reset_index(drop=True)
    return frames


def stored_commit_rows(store: ResultStore, sha: str) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Deterministic rows of a commit's clean runs in the store (latest per key), and their run ids."""
    frames, run_ids = {}, set()
    for table in KEY_COLUMNS:
        if table not in store.tables():
            continue
        frame = store.read(table)
        if frame.empty or "git_sha" not in frame.columns:
            continue
        clean = frame["git_dirty"].astype(str).str.lower().isin(["false", "0"]) if "git_dirty" in frame else True
        frame = frame[(frame["git_sha"] == sha) & clean]
        if len(frame):
            frames[table] = frame.reset_index(drop=True)
            run_ids |= set(frame["run_id"])
    return frames, sorted(run_ids)


def tree_commands(tree: Path) -> set[str]:
    """Command names the tree's CLI offers (from its --help)."""
    done = subprocess.run([sys.executable, "-m", "granite_bench.cli", "--help"], capture_output=True, text=True,
                          cwd=str(tree), env=ab.tree_env(tree), timeout=300)
    names = set()
    for line in done.stdout.splitlines():
        parts = line.strip("│ ").split()
        if parts:
            names.add(parts[0])
    return names


TREE_COMMAND_TIMEOUT_S = 1800


def run_tree_commands(tree: ab.CodeTree, commands: list[str],
                      console=None) -> tuple[dict[str, pd.DataFrame], list[str], list[str]]:
    """Run each deterministic command the tree has, into a scratch store; its rows, the commands run, notes."""
    notes, ran = [], []
    available = tree_commands(tree.path)
    with tempfile.TemporaryDirectory(prefix="granite-bench-det-") as scratch:
        for command in commands:
            argv = command.split()
            if argv[0] not in available:
                notes.append(f"{tree.label}: no '{argv[0]}' command in that tree; skipped")
                continue
            if console is not None:
                console.print(f"[dim]{tree.label}: granite-bench {command} (deterministic results)[/]")
            try:
                done = subprocess.run([sys.executable, "-m", "granite_bench.cli", *argv, "--results-dir", scratch],
                                      capture_output=True, text=True, cwd=str(tree.path), env=ab.tree_env(tree.path),
                                      timeout=TREE_COMMAND_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                notes.append(f"{tree.label}: 'granite-bench {command}' ran past {TREE_COMMAND_TIMEOUT_S} s; skipped")
                continue
            if done.returncode not in (0, 1):  # 1 is a failed check, which is a result; anything else is not
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                notes.append(f"{tree.label}: 'granite-bench {command}' exited {done.returncode}: {' | '.join(tail)}")
            else:
                ran.append(command)
        store = ResultStore(scratch)
        frames = {t: store.read(t) for t in KEY_COLUMNS if t in store.tables()}
    return {t: f for t, f in frames.items() if len(f)}, ran, notes


def deterministic_rows(side: Side, store: ResultStore, commands: list[str], rerun: bool, console=None) -> list[str]:
    """Fill side.frames (and side.source); returns notes."""
    if side.tree is None:
        side.frames = read_runs(store, side.run_ids)
        side.source = "stored runs " + ", ".join(side.run_ids)
        return []
    tree = side.tree
    if not rerun and not tree.dirty and tree.sha != "unknown":
        frames, run_ids = stored_commit_rows(store, tree.sha)
        if frames:
            side.frames, side.run_ids = frames, run_ids
            side.source = f"stored runs of {tree.sha[:10]} ({len(run_ids)})"
            return []
    side.frames, ran, notes = run_tree_commands(tree, commands, console)
    state = f"{tree.sha[:10]}{', dirty' if tree.dirty else ''}"
    side.source = f"ran {', '.join(ran) or 'nothing'} in {tree.label} ({state})"
    return notes


# ----- timing rows -----------------------------------------------------------------------------------------------

def timing_rows(result: ab.ABResult, floor: float, alpha: float, setup: str) -> list[Row]:
    tests = stats.gate_timings(result.per_trial, floor=floor, alpha=alpha)
    rows = [Row(kind="timing", table="ab", group=setup, metric=t.metric, baseline=t.baseline_median,
                candidate=t.candidate_median, verdict=t.verdict, ratio=t.ratio, ci_low=t.ci_low, ci_high=t.ci_high,
                p_value=t.p_slower, p_adjusted=t.p_adjusted,
                detail=f"{t.n_baseline}+{t.n_candidate} trials, median of {result.reps} reps each")
            for t in tests]
    for metric, (base, cand) in result.tails.items():
        rows.append(Row(kind="tail", table="ab", group=setup, metric=metric, baseline=base, candidate=cand,
                        verdict=stats.REPORTED, ratio=cand / base if base else float("nan"),
                        detail="over every repetition; reported, not gated"))
    return rows


# ----- the whole comparison --------------------------------------------------------------------------------------

@dataclass
class CompareSettings:
    baseline: str
    candidate: str = "worktree"
    results_dir: Path = Path("results")
    trials: int = 8
    reps: int = 32
    floor: float = stats.DEFAULT_FLOOR
    alpha: float = stats.DEFAULT_ALPHA
    error_growth: float = DEFAULT_ERROR_GROWTH
    timing: bool = True
    deterministic: bool = True
    rerun: bool = False
    commands: list[str] = field(default_factory=lambda: list(DETERMINISTIC_COMMANDS))
    timing_model: str = "tiny-gqa"
    timing_layers: int | None = None
    threads: int = 1
    store: bool = True


def probe_args(settings: CompareSettings) -> list[str]:
    args = ["--model", settings.timing_model, "--threads", str(settings.threads)]
    if settings.timing_layers:
        args += ["--layers", str(settings.timing_layers)]
    return args


def resolve_side(spec: str, store: ResultStore, repo: Path | None, stack) -> Side:
    """Stored runs when spec names some, else a code tree (entered on `stack`, removed when it closes)."""
    is_folder = spec == ab.WORKTREE or (Path(spec) / "granite_bench").is_dir()
    run_ids = None if is_folder else match_run_ids(store, spec)
    if run_ids:
        return Side(spec, run_ids=run_ids)
    if not is_folder and not ab.is_tree_spec(repo, spec):
        raise CompareError(f"{spec!r} names no stored run in {store.root} and no commit or folder: pass a run id "
                           f"(see `granite-bench results`), a git ref such as HEAD~1, or 'worktree'")
    try:
        return Side(spec, tree=stack.enter_context(ab.code_tree(repo, spec)))
    except ab.TreeError as err:
        raise CompareError(str(err)) from None


def run_compare(settings: CompareSettings, console=None, progress=None) -> Comparison:
    """Resolve both sides, gate their deterministic results and (both being code) their timings; store it."""
    if settings.trials < stats.MIN_TRIALS:
        raise CompareError(f"--trials must be at least {stats.MIN_TRIALS} (interleaved trials per side)")
    if not 1 <= settings.reps <= MAX_REPS:
        raise CompareError(f"--reps must be between 1 and {MAX_REPS} (decode steps per trial)")
    store = ResultStore(settings.results_dir)
    repo = ab.repo_root(Path.cwd()) or ab.repo_root()
    notes: list[str] = []
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        baseline = resolve_side(settings.baseline, store, repo, stack)
        candidate = resolve_side(settings.candidate, store, repo, stack)
        if settings.deterministic:
            for side in (baseline, candidate):
                notes += deterministic_rows(side, store, settings.commands, settings.rerun, console)
            rows += compare_deterministic(baseline.frames, candidate.frames, settings.error_growth)
            if not baseline.frames and not candidate.frames:
                notes.append("no deterministic results on either side")
        if settings.timing and baseline.tree is not None and candidate.tree is not None:
            setup = f"{settings.timing_model}{f' l{settings.timing_layers}' if settings.timing_layers else ''} " \
                    f"b1 fp32 cpu t{settings.threads}"
            try:
                result = ab.run_interleaved(baseline.tree, candidate.tree, trials=settings.trials,
                                            reps=settings.reps, probe_args=probe_args(settings), on_trial=progress)
                rows += timing_rows(result, settings.floor, settings.alpha, setup)
            except ab.TreeError as err:
                if err.tree is not baseline.tree:
                    raise CompareError(str(err)) from None
                # An older baseline may predate the runner interface the probe drives: say so, do not fail.
                notes.append(f"timings not compared: the baseline tree cannot be timed ({str(err).splitlines()[0]})")
        elif settings.timing:
            notes.append("timings not compared: stored runs were not measured side by side; pass git refs "
                         "(e.g. --baseline HEAD~1 --candidate worktree) to gate timings")
    settings_record = asdict(settings) | {"results_dir": str(settings.results_dir)}
    comparison = Comparison(baseline, candidate, rows, notes, settings_record)
    if settings.store:
        comparison.settings["stored_as"] = str(store_comparison(store, comparison) or "")
    return comparison


# ----- storing and printing --------------------------------------------------------------------------------------

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


def side_columns(side: Side, prefix: str) -> dict:
    tree = side.tree
    return {f"{prefix}_spec": side.spec, f"{prefix}_sha": tree.sha if tree else "",
            f"{prefix}_dirty": bool(tree.dirty) if tree else False, f"{prefix}_runs": ",".join(side.run_ids),
            f"{prefix}_source": side.source}


def comparison_frame(comparison: Comparison) -> pd.DataFrame:
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


def store_comparison(store: ResultStore, comparison: Comparison) -> Path | None:
    from granite_bench.results.metadata import collect_run_metadata
    frame = comparison_frame(comparison)
    if frame.empty:
        return None
    settings = {k: v for k, v in comparison.settings.items() if k != "stored_as"}
    meta = collect_run_metadata(suite="compare", device="cpu", dtype="-", config=settings, seed=0)
    return store.write("comparisons", frame, meta)


VERDICT_STYLE = {REGRESSION: "bold red", MISSING: "yellow", NEW: "cyan", CHANGED: "yellow", BETTER: "green",
                 stats.FASTER: "green", SAME: "", stats.PASS: "", stats.REPORTED: "dim"}


def render(console, comparison: Comparison) -> None:
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
    console.print(f"timing gate: regression = one-sided Mann-Whitney p < {s['alpha']:g} after Holm over the gated "
                  f"metrics AND median ratio > {1 + s['floor']:.2f}; tails are reported only")
    if comparison.regressed:
        bad = [f"{r.metric} ({r.group})" for r in comparison.rows if r.verdict == REGRESSION]
        console.print(f"[bold red]REGRESSION[/] {len(bad)}: {'; '.join(bad[:8])}")
    else:
        console.print("[bold green]OK[/] no regression")
    if s.get("stored_as"):
        console.print(f"stored: {s['stored_as']}")


def to_json(comparison: Comparison) -> str:
    """The comparison's rows as JSON records (what is stored)."""
    return comparison_frame(comparison).to_json(orient="records")


__all__ = ["CompareError", "CompareSettings", "Comparison", "Row", "compare_deterministic", "judge_value", "render",
           "run_compare", "to_json"]
