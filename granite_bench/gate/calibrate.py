"""The timing gate's power, measured: the real gate run on copies of the code tree with a known synthetic slowdown.

Each copy of the tree (granite_bench/ and suites/) gets busy work (a pure-Python loop) wrapped around
GraniteRunner.token_generate and context_encode in its runtime/runner.py; the loop's iteration count is calibrated
against the decode step (and prefill call) measured here, in CPU time, so that level 0.10 adds 10% of a step. The
baseline is a copy with zero iterations, so every tree carries the same wrapper. The comparisons of every level
(null, 5%, 10%, ..., prefill-only) are spread evenly over the campaign so the machine's load drifts onto all of them
alike; each one runs the gate exactly as `granite-bench compare` does (run_compare, timings only) and is stored as
it finishes (table `gate_power`, with its per-trial timings for the A/A resampling).

power_table summarises detection rates (false alarms at level 0) with Wilson intervals; aa_false_alarms replays the
gate's decision on A/A comparisons resampled from the recorded trials of unchanged comparisons; design_table judges
the same recorded trials by each candidate design (pooled or paired, wall or CPU time) to show what each one buys.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

DECODE_LEVELS = (0.0, 0.05, 0.10, 0.20, 0.30)
PREFILL_LEVEL = 0.20           # the prefill-only tree: busy work of 20% of a prefill call, none in decode
NULL, DECODE, PREFILL = "null", "decode", "prefill"
AA = "aa_resampled"            # a summary row: the gate's A/A false alarms resampled from the null comparisons
TABLE = "gate_power"
COPIED = ("granite_bench", "suites")
RUNNER_FILE = Path("granite_bench") / "runtime" / "runner.py"
INJECTION_MARK = "# -- injected by granite_bench.gate.calibrate"


class CalibrationError(ValueError):
    """Bad calibration input (one line, says what to change)."""


# -- trees with a known slowdown ------------------------------------------------------------------------------------
def busy_work(iterations: int) -> int:
    """The injected work: a pure-Python loop (CPU-bound, one thread); the same code as the injected copy's."""
    total = 0
    for i in range(iterations):
        total += i
    return total


INJECTION = '''

{mark}: a known synthetic slowdown ---------------------------------------
CALIBRATION_BUSY = {busy!r}
CALIBRATION_CALLS = {{name: 0 for name in CALIBRATION_BUSY}}


def _calibration_busy(iterations):
    total = 0
    for i in range(iterations):
        total += i
    return total


def _calibration_slow_down(name):
    method = getattr(GraniteRunner, name)

    def slowed(self, *args, **kwargs):
        CALIBRATION_CALLS[name] += 1
        _calibration_busy(CALIBRATION_BUSY[name])
        return method(self, *args, **kwargs)
    setattr(GraniteRunner, name, slowed)


for _calibration_name in CALIBRATION_BUSY:
    _calibration_slow_down(_calibration_name)
'''


def slowed_tree(source: Path, dest: Path, decode_iterations: int = 0, prefill_iterations: int = 0) -> Path:
    """Copy source's granite_bench/ and suites/ to dest with busy work injected into the decode step and prefill."""
    if dest.exists():
        shutil.rmtree(dest)
    for name in COPIED:
        if (source / name).is_dir():
            shutil.copytree(source / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    runner = dest / RUNNER_FILE
    text = runner.read_text()
    if "class GraniteRunner" not in text:
        raise CalibrationError(f"{source / RUNNER_FILE} defines no GraniteRunner: calibrate a tree that has one")
    busy = {"token_generate": int(decode_iterations), "context_encode": int(prefill_iterations)}
    runner.write_text(text + INJECTION.format(mark=INJECTION_MARK, busy=busy))
    return dest


def measure_costs(model: str = "tiny-gqa", layers: int | None = None, threads: int = 1, steps: int = 64,
                  rounds: int = 5) -> dict:
    """CPU seconds (this thread) of a decode step, a prefill call and one busy-work iteration, measured here:
    medians over `rounds` interleaved rounds, so a load change hits all three alike."""
    import torch

    from ..runtime.select import build_runner
    torch.set_num_threads(threads)
    runner = build_runner(model, dtype="float32", device="cpu", batch_size=1, seq_len=256, buckets=[32],
                          num_layers=layers)
    prompt = [[(7 * i + 3) % 200 + 5 for i in range(32)]]
    probe_iterations = 200_000
    decode, prefill, per_iteration = [], [], []
    for _ in range(rounds + 1):  # the first round warms up and is dropped
        runner.reset()
        start = time.thread_time()
        logits = runner.context_encode(prompt)
        prefill.append(time.thread_time() - start)
        next_id = logits[:, -1].argmax(-1)
        steps_s = []
        for step in range(steps):
            start = time.thread_time()
            logits = runner.token_generate(next_id, torch.tensor([32 + step]))
            steps_s.append(time.thread_time() - start)
            next_id = logits.argmax(-1)
        decode.append(statistics.median(steps_s))
        start = time.thread_time()
        busy_work(probe_iterations)
        per_iteration.append((time.thread_time() - start) / probe_iterations)
    return {"decode_step_s": statistics.median(decode[1:]), "prefill_s": statistics.median(prefill[1:]),
            "busy_iteration_s": statistics.median(per_iteration[1:])}


@dataclass(frozen=True)
class Arm:
    kind: str            # null | decode | prefill
    level: float         # fraction of a decode step (decode, null) or of a prefill call (prefill)

    @property
    def name(self) -> str:
        return f"{self.kind}-{round(100 * self.level)}"


def arms(levels=DECODE_LEVELS, prefill_level: float | None = PREFILL_LEVEL) -> list[Arm]:
    found = [Arm(NULL if level == 0 else DECODE, level) for level in levels]
    if prefill_level:
        found.append(Arm(PREFILL, prefill_level))
    return found


def iterations_for(arm: Arm, costs: dict) -> tuple[int, int]:
    """(decode, prefill) busy-work iterations that add arm.level of a step (or of a prefill call)."""
    per = costs["busy_iteration_s"]
    if arm.kind == PREFILL:
        return 0, round(arm.level * costs["prefill_s"] / per)
    return round(arm.level * costs["decode_step_s"] / per), 0


def schedule(counts: dict[Arm, int]) -> list[tuple[Arm, int]]:
    """(arm, index) pairs spreading each arm evenly over the campaign (the arm least far through its count goes
    next; ties in the given order), so load drifts fall on every arm alike and a cut-short campaign stays balanced."""
    plan, done = [], {arm: 0 for arm in counts}
    for _ in range(sum(counts.values())):
        arm = min((a for a in counts if done[a] < counts[a]), key=lambda a: (done[a] + 0.5) / counts[a])
        plan.append((arm, done[arm]))
        done[arm] += 1
    return plan


# -- counting and intervals ---------------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (scipy's binomtest)."""
    if n <= 0:
        return float("nan"), float("nan")
    ci = scipy_stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def paired_ratio(trials_json: str, metric: str) -> float:
    """exp(median log(B / A)) over a recorded comparison's rounds: its measured slowdown of `metric` (NaN when the
    metric was not recorded)."""
    data = json.loads(trials_json)
    if metric not in data.get("A", {}):
        return float("nan")
    base, cand = np.asarray(data["A"][metric], float), np.asarray(data["B"][metric], float)
    n = min(len(base), len(cand))
    return float(np.exp(np.median(np.log(cand[:n] / base[:n])))) if n else float("nan")


def finite_median(values) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.median(finite)) if finite else float("nan")


def power_table(frame: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per gate, path and arm: comparisons, detected (the arm's own metric flagged; at level 0 a false alarm is any
    timing metric flagged), the rate with its Wilson interval, other metrics flagged, median and longest gate
    minutes, the median measured paired ratio of the slowed metric (wall clock and CPU time) and the load (1-minute
    average after each comparison: median, highest)."""
    rows = []
    frame = frame[frame["kind"] != AA] if "kind" in frame.columns else frame
    # the path the comparisons took: folder copies wrapping the runner (rows from before the column), or compare's
    frame = frame.assign(path=frame["path"].fillna("copies") if "path" in frame.columns else "copies")
    for (gate, path, kind, level), group in frame.groupby(["gate", "path", "kind", "level"], sort=True):
        n = len(group)
        hits = int(group["detected"].sum())
        low, high = wilson_interval(hits, n, confidence)
        slowed = "prefill" if kind == PREFILL else "decode_step"
        wall = [paired_ratio(t, f"{slowed}_ms") for t in group["trials_json"]]
        cpu = [paired_ratio(t, f"{slowed}_cpu_ms") for t in group["trials_json"]]
        rows.append({"gate": gate, "path": path, "kind": kind, "level": float(level), "comparisons": n,
                     "detected": hits,
                     "rate": hits / n, "ci_low": low, "ci_high": high,
                     "other_flagged": int(group["other_flagged"].sum()),
                     "median_gate_minutes": float(group["gate_seconds"].median() / 60),
                     "median_wall_ratio": finite_median(wall), "median_cpu_ratio": finite_median(cpu),
                     "max_gate_minutes": float(group["gate_seconds"].max() / 60),
                     "median_load1": float(group["load1"].median()), "max_load1": float(group["load1"].max())})
    return pd.DataFrame(rows)


# -- A/A resampling -------------------------------------------------------------------------------------------------
def recorded_rounds(trials_json: str) -> list[dict]:
    """Rounds of a recorded comparison in run order: [{'A': {metric: v}, 'B': {metric: v}, 'a_first': bool}, ...]
    (round i holds the i-th trial of each side)."""
    data = json.loads(trials_json)
    order = data.get("order", [])
    rounds = []
    for i in range(len(order) // 2):
        rounds.append({"A": {m: data["A"][m][i] for m in data["A"]}, "B": {m: data["B"][m][i] for m in data["B"]},
                       "a_first": order[2 * i] == "A"})
    return rounds


def pseudo_comparison(rounds: list[dict], n_rounds: int, rng: np.random.Generator):
    """An A/A comparison: n_rounds rounds drawn without replacement from recorded rounds of unchanged comparisons,
    each round's two trials handed to pseudo-A and pseudo-B at random (the same code ran on both sides, so under the
    null the labels are exchangeable) and labelled in the gate's AB, BA, ... order. It keeps the machine's
    trial-to-trial noise; it cannot keep an offset that stays with one side for a whole comparison (swapping sides
    averages it away: long-lived worker processes had one, ab_probe.py), which only the real unchanged comparisons
    measure. Per metric (baseline values, candidate values), and the order."""
    if len(rounds) < n_rounds:
        raise CalibrationError(f"{len(rounds)} recorded null rounds cannot fill an A/A comparison of {n_rounds}: "
                               f"run more null comparisons")
    picks = rng.choice(len(rounds), size=n_rounds, replace=False)
    swaps = rng.random(n_rounds) < 0.5
    metrics = list(rounds[0]["A"])
    samples = {}
    for m in metrics:
        base = [rounds[i]["B" if swap else "A"][m] for i, swap in zip(picks, swaps)]
        cand = [rounds[i]["A" if swap else "B"][m] for i, swap in zip(picks, swaps)]
        samples[m] = (base, cand)
    order = [side for r in range(n_rounds) for side in (("A", "B") if r % 2 == 0 else ("B", "A"))]
    return samples, order


def aa_false_alarms(null_trials: list[str], decide, n_rounds: int, n_resamples: int = 2000,
                    seed: int = 0) -> tuple[int, int]:
    """(false alarms, resamples): `decide(samples, order) -> bool` (True: the gate flags) applied to A/A comparisons
    resampled from the pooled rounds of recorded unchanged comparisons (pseudo_comparison)."""
    rounds = [r for t in null_trials for r in recorded_rounds(t)]
    if not rounds:
        raise CalibrationError("no recorded unchanged comparison to resample: run the null level first")
    rng = np.random.default_rng(seed)
    alarms = 0
    for _ in range(n_resamples):
        samples, order = pseudo_comparison(rounds, n_rounds, rng)
        alarms += bool(decide(samples, order))
    return alarms, n_resamples


# -- the campaign ---------------------------------------------------------------------------------------------------
@dataclass
class CalibrationSettings:
    gate: str = "default"                      # a label for the gate under test, stored with every row
    null_comparisons: int = 30
    per_level: int = 10                        # comparisons per decode level above 0 and for prefill-only
    levels: tuple[float, ...] = DECODE_LEVELS
    prefill_level: float | None = PREFILL_LEVEL
    results_dir: Path = Path("results")
    work_dir: Path | None = None               # where the slowed trees are made (default: a temp folder)
    compare: dict = field(default_factory=dict)  # CompareSettings overrides: the gate's options (trials, floor, ...)


def check_settings(settings: CalibrationSettings) -> None:
    if settings.null_comparisons < 0 or settings.per_level < 0:
        raise CalibrationError("--null and --per-level take counts of 0 or more")
    if any(not 0 <= level < 5 for level in settings.levels):
        raise CalibrationError("--levels are fractions of a decode step between 0 and 5 (0.1 = 10%)")
    if settings.null_comparisons == 0 and settings.per_level == 0:
        raise CalibrationError("nothing to run: give --null or --per-level above 0")


def arm_counts(settings: CalibrationSettings) -> dict[Arm, int]:
    counts = {}
    for arm in arms(settings.levels, settings.prefill_level):
        counts[arm] = settings.null_comparisons if arm.kind == NULL else settings.per_level
    return {arm: n for arm, n in counts.items() if n > 0}


def trials_json(result) -> str:
    """The per-trial values of both sides, with the run order: what the A/A resampling reads back."""
    a, b = {}, {}
    for metric, (base, cand) in result.per_trial.items():
        a[metric], b[metric] = list(base), list(cand)
    return json.dumps({"order": result.order, "A": a, "B": b})


def gated_value(verdicts: dict, metric: str, attr: str) -> float:
    """attr of the gated row of metric (its CPU-time row when gated, else the wall-clock one); NaN if neither."""
    from ..results import stats
    rows = [verdicts.get(f"{metric}_cpu_ms"), verdicts.get(f"{metric}_ms")]
    gated = [r for r in rows if r is not None and r.verdict != stats.REPORTED] or [r for r in rows if r is not None]
    return float(getattr(gated[0], attr)) if gated else float("nan")


def comparison_row(arm: Arm, index: int, comparison, seconds: float, iterations: tuple[int, int],
                   settings: CalibrationSettings, campaign: str) -> dict:
    verdicts = {r.metric: r for r in comparison.rows if r.kind == "timing"}
    slowed = "prefill_ms" if arm.kind == PREFILL else "decode_step_ms"
    flagged = {m for m, r in verdicts.items() if r.verdict == "regression"}
    detected = bool(flagged) if arm.kind == NULL else any(m.startswith(slowed.split("_ms")[0]) for m in flagged)
    other = {m for m in flagged if not m.startswith(slowed.split("_ms")[0])} if arm.kind != NULL else set()

    def value(metric, attr):
        row = verdicts.get(metric)
        return float(getattr(row, attr)) if row is not None else float("nan")
    timing = comparison.timings
    return {"campaign": campaign, "gate": settings.gate, "arm": arm.name, "kind": arm.kind, "level": arm.level,
            "index": index, "detected": detected, "other_flagged": bool(other),
            "flagged_metrics": ",".join(sorted(flagged)), "notes": " | ".join(comparison.notes),
            "decode_ratio": value("decode_step_ms", "ratio"), "prefill_ratio": value("prefill_ms", "ratio"),
            "decode_cpu_ratio": value("decode_step_cpu_ms", "ratio"),
            "prefill_cpu_ratio": value("prefill_cpu_ms", "ratio"),
            # of the gated clock's metric (CPU time unless the gate judges wall time)
            "decode_p_adjusted": gated_value(verdicts, "decode_step", "p_adjusted"),
            "prefill_p_adjusted": gated_value(verdicts, "prefill", "p_adjusted"),
            "gate_seconds": seconds, "rounds": timing.trials if timing is not None else 0,
            "decode_iterations": iterations[0], "prefill_iterations": iterations[1],
            "load1": os.getloadavg()[0], "trials_json": trials_json(timing) if timing is not None else "{}"}


def run_calibration(settings: CalibrationSettings, console=None) -> pd.DataFrame:
    """Make the slowed trees, run the gate on each scheduled comparison, store each row as it finishes."""
    import tempfile

    from ..results.metadata import collect_run_metadata, new_run_id, require_directions
    from ..results.store import ResultStore
    from .compare import CompareSettings, run_compare
    check_settings(settings)
    store = ResultStore(settings.results_dir)
    source = Path(__file__).resolve().parents[2]
    base_compare = CompareSettings(baseline="", deterministic=False, store=False)
    base_compare = replace(base_compare, **settings.compare)
    work = Path(settings.work_dir or tempfile.mkdtemp(prefix="granite-bench-power-"))
    work.mkdir(parents=True, exist_ok=True)
    costs = measure_costs(base_compare.timing_model, base_compare.timing_layers, base_compare.threads)
    if console is not None:
        console.print(f"costs (CPU s): {costs}")
    counts = arm_counts(settings)
    baseline = slowed_tree(source, work / "baseline")
    trees, iterations = {}, {}
    for arm in counts:
        iterations[arm] = iterations_for(arm, costs)
        trees[arm] = slowed_tree(source, work / arm.name, *iterations[arm])
    campaign = new_run_id()
    config = {"calibration": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
              "costs": costs, "compare": {k: str(v) for k, v in asdict(base_compare).items()}}
    rows = []
    for arm, index in schedule(counts):
        compare = replace(base_compare, baseline=str(baseline), candidate=str(trees[arm]))
        start = time.perf_counter()
        comparison = run_compare(compare)
        seconds = time.perf_counter() - start
        row = comparison_row(arm, index, comparison, seconds, iterations[arm], settings, campaign)
        row["costs_json"] = json.dumps(costs)
        meta = collect_run_metadata(suite="gate-power", device="cpu", dtype="float32", config=config, seed=index)
        store.write_run(meta, {TABLE: require_directions(TABLE, [row])})
        rows.append(row)
        if console is not None:
            console.print(f"{arm.name} #{index}: detected={row['detected']} decode x{row['decode_ratio']:.3f} "
                          f"(cpu x{row['decode_cpu_ratio']:.3f}) prefill x{row['prefill_ratio']:.3f} "
                          f"(cpu x{row['prefill_cpu_ratio']:.3f}) rounds {row['rounds']} {seconds:.0f}s "
                          f"load {row['load1']:.2f} "
                          f"{row['flagged_metrics']}")
    if settings.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return pd.DataFrame(rows)


# -- summaries ------------------------------------------------------------------------------------------------------
def gate_decider(compare):
    """decide(samples, order) -> bool: the gate's own rule (as CompareSettings `compare` configures it) applied to
    recorded per-trial values; what the A/A resampling replays."""
    from ..results import stats
    from .compare import gated_metrics, sequential_plan

    if compare.design == "pooled":
        def decide(samples, order):
            tests = stats.gate_timings({m: samples[m] for m in ("decode_step_ms", "prefill_ms")}, compare.floor,
                                       compare.alpha, with_ci=False)
            return any(t.verdict == stats.REGRESSION for t in tests)
        return decide, compare.trials
    plan = sequential_plan(compare)
    metrics = gated_metrics(compare.clock)

    def decide(samples, order):
        decision, _, _ = stats.sequential_replay({m: samples[m] for m in metrics}, plan, compare.floor)
        return decision == stats.REGRESSION
    return decide, plan.max_rounds


def campaign_settings(frame: pd.DataFrame):
    """The CompareSettings a stored campaign ran its gate with (from its config_json)."""
    from .compare import CompareSettings
    config = json.loads(frame["config_json"].iloc[0])["compare"]
    config.setdefault("design", "pooled")   # a campaign from before the sequential gate ran the pooled one
    defaults = CompareSettings(baseline="")
    typed = {}
    for key, text in config.items():
        current = getattr(defaults, key, None)
        if isinstance(current, bool):
            typed[key] = text == "True"
        elif isinstance(current, (int, float)) and not isinstance(current, bool):
            typed[key] = type(current)(float(text)) if isinstance(current, float) else int(float(text))
        elif key in ("design", "clock", "timing_model"):
            typed[key] = text
    return replace(defaults, **typed)


def aa_summary(frame: pd.DataFrame, n_resamples: int = 2000, seed: int = 0) -> dict:
    """A/A false alarms of a campaign's gate, resampled from its null comparisons' recorded trials."""
    nulls = frame[frame["kind"] == NULL]
    decide, n_rounds = gate_decider(campaign_settings(frame))
    alarms, n = aa_false_alarms(list(nulls["trials_json"]), decide, n_rounds, n_resamples, seed)
    low, high = wilson_interval(alarms, n)
    return {"gate": frame["gate"].iloc[0], "aa_false_alarms": alarms, "aa_resamples": n, "rate": alarms / n,
            "ci_low": low, "ci_high": high, "sources": len(nulls), "rounds": n_rounds,
            "pooled_rounds": int(sum(len(recorded_rounds(t)) for t in nulls["trials_json"]))}


def read_campaigns(results_dir: Path, gate: str | None = None) -> pd.DataFrame:
    """The stored calibration comparisons (table gate_power), optionally of one gate label."""
    from ..results.store import ResultStore
    store = ResultStore(results_dir)
    if TABLE not in store.tables():
        raise CalibrationError(f"no {TABLE} table in {results_dir}: run `granite-bench gate-power` first")
    frame = store.read(TABLE)
    if gate is not None:
        frame = frame[frame["gate"] == gate]
        if frame.empty:
            raise CalibrationError(f"no calibration of gate {gate!r} in {results_dir}: pass one of "
                                   f"{', '.join(sorted(store.read(TABLE)['gate'].unique()))}")
    return frame.reset_index(drop=True)


def store_aa_summary(results_dir: Path, frame: pd.DataFrame, summary: dict) -> None:
    """The A/A summary as one gate_power row (kind aa_resampled), so the dashboard can show it."""
    from ..results.metadata import collect_run_metadata, require_directions
    from ..results.store import ResultStore
    row = {"campaign": ",".join(sorted(frame["campaign"].unique())), "gate": summary["gate"], "arm": AA, "kind": AA,
           "level": 0.0, "index": -1, "aa_false_alarms": summary["aa_false_alarms"],
           "aa_resamples": summary["aa_resamples"], "aa_rate": summary["rate"], "aa_ci_low": summary["ci_low"],
           "aa_ci_high": summary["ci_high"], "aa_sources": summary["sources"], "rounds": summary["rounds"]}
    meta = collect_run_metadata(suite="gate-power", device="cpu", dtype="float32", config={"aa": summary}, seed=0)
    ResultStore(results_dir).write_run(meta, {TABLE: require_directions(TABLE, [row])})


# -- which ingredient helps: the designs side by side on the same recorded trials -----------------------------------
DESIGNS = {  # name: (paired?, clock)
    "pooled-wall": (False, "wall"), "pooled-cpu": (False, "cpu"), "paired-wall": (True, "wall"),
    "paired-cpu": (True, "cpu"),
}


def design_decision(trials_json: str, design: str, rounds: int, floor: float, alpha: float) -> bool | None:
    """Whether `design` flags a recorded comparison judged on its first `rounds` rounds (one fixed look, Holm over
    decode step and prefill); None when the comparison lacks those rounds or that clock."""
    from ..results import stats
    paired, clock = DESIGNS[design]
    metrics = ("decode_step_ms", "prefill_ms") if clock == "wall" else ("decode_step_cpu_ms", "prefill_cpu_ms")
    data = json.loads(trials_json)
    if any(m not in data["A"] or len(data["A"][m]) < rounds for m in metrics):
        return None
    samples = {m: (data["A"][m][:rounds], data["B"][m][:rounds]) for m in metrics}
    tests = (stats.judge_paired(samples, floor, alpha) if paired
             else stats.gate_timings(samples, floor=floor, alpha=alpha, with_ci=False))
    return any(t.verdict == stats.REGRESSION for t in tests)


def design_table(frame: pd.DataFrame, rounds: int = 12, floor: float = 0.03, alpha: float = 0.01) -> pd.DataFrame:
    """Detection rate per arm of each design in DESIGNS on the same recorded trials (their first `rounds` rounds)."""
    rows = []
    frame = frame[frame["kind"] != AA]
    for (kind, level), group in frame.groupby(["kind", "level"], sort=True):
        row = {"kind": kind, "level": float(level)}
        for design in DESIGNS:
            found = [d for d in (design_decision(t, design, rounds, floor, alpha) for t in group["trials_json"])
                     if d is not None]
            row[design] = f"{sum(found)}/{len(found)}"
        rows.append(row)
    return pd.DataFrame(rows)
