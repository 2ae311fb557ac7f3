"""`granite-bench bisect`: the first commit where a timing regressed or parity started to fail.

A binary search over the first-parent commits from --good (exclusive) to --bad (inclusive), `git rev-list
--first-parent --ancestry-path good..bad`, like `git bisect run` with the gate as the test:
- a timing metric (decode_step_ms, prefill_ms): each probed commit is timed against the good commit by the compare
  gate's own default test (paired rounds of interleaved A/B trials, ab.run_interleaved; the metric's trial-thread CPU
  time unless --clock wall; a one-sided signed-rank test at sequential looks, stats.sequential_look, stopping early
  when the answer is clear); a regression marks it bad;
- --parity: each probed commit runs its own `granite-bench parity` (exit 0 good, 1 bad).
Both ends are checked first: the bad commit must be bad (against the good one, or failing parity), the good commit
must pass parity. A timing answer is then confirmed against its own parent (a noisy miss of one probe sends a
binary search the wrong way); an unconfirmed answer is printed with a warning and exit 1. A commit whose package does not import, or whose command crashes, is skipped (git bisect's exit
125) and the search continues with the nearest untested commit. Each step is printed and stored (table
`bisect_steps`, one row per probed commit, in one committed run).

Only the standard library is imported at module level: the range checks run before any heavy import.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

TIMING_METRICS = ("decode_step_ms", "prefill_ms")     # ab.GATED_METRICS, kept in step (ab imports numpy)
PARITY = "parity"
GOOD, BAD, SKIP = "good", "bad", "skip"
IMPORT_CHECK = "import granite_bench.cli"
COMMAND_TIMEOUT_S = 1800


class BisectError(ValueError):
    """Input that cannot be bisected (one line, says what to change)."""


@dataclass
class BisectSettings:
    good: str
    bad: str
    repo: Path
    mode: str = "decode_step_ms"          # a TIMING_METRICS name, or PARITY
    trials: int = 48                      # paired rounds at the last look (the compare gate's defaults)
    reps: int = 32
    floor: float = 0.03
    alpha: float = 0.01
    looks: int = 3
    clock: str = "cpu"                    # cpu: the trial thread's CPU time of the metric | wall
    model: str = "tiny-gqa"
    layers: int | None = None
    threads: int = 1
    parity_args: list[str] = field(default_factory=lambda: ["--num-tokens", "8"])
    results_dir: Path | None = None       # None: not stored


@dataclass
class Step:
    role: str                 # good-end | bad-end | probe | confirm (timing: the answer against its parent)
    sha: str
    subject: str
    judgement: str            # good | bad | skip
    evidence: str
    seconds: float
    ratio: float = float("nan")
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    p_adjusted: float = float("nan")
    baseline_median: float = float("nan")
    candidate_median: float = float("nan")
    exit_code: int = -1


@dataclass
class BisectResult:
    good_sha: str
    bad_sha: str
    commits: list[str]                       # good (exclusive) .. bad (inclusive), oldest first
    steps: list[Step]
    first_bad: str | None                    # None when skipped commits leave it open
    candidates: list[str]                    # the commits it could be (one when found)
    subject: str = ""
    confirmed: bool | None = None            # timing: the first bad commit against its own parent; None: not run


# ----- the range: cheap git checks, before any heavy import ---------------------------------------------------------

def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=120)


def subject_of(repo: Path, sha: str) -> str:
    return _git(repo, "log", "-1", "--format=%s", sha).stdout.strip()


def check_range(repo: Path | None, good: str, bad: str) -> tuple[str, str, list[str]]:
    """(good sha, bad sha, commits good..bad oldest first); BisectError for a bad range or a dirty tree."""
    if repo is None:
        raise BisectError("bisect needs a git repository: run it from inside the repository to search")
    shas = {}
    for option, rev in (("--good", good), ("--bad", bad)):
        done = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        if done.returncode != 0 or not done.stdout.strip():
            raise BisectError(f"{option} {rev!r} names no commit of {repo}: pass a sha, branch, tag or HEAD~N")
        shas[option] = done.stdout.strip()
    good_sha, bad_sha = shas["--good"], shas["--bad"]
    if good_sha == bad_sha:
        raise BisectError(f"--good and --bad are the same commit {good_sha[:12]}: pass an older --good")
    if _git(repo, "merge-base", "--is-ancestor", good_sha, bad_sha).returncode != 0:
        hint = ("they are reversed: swap --good and --bad"
                if _git(repo, "merge-base", "--is-ancestor", bad_sha, good_sha).returncode == 0
                else "pass a --good that is an ancestor of --bad")
        raise BisectError(f"--good {good!r} is not an ancestor of --bad {bad!r}: {hint}")
    if _git(repo, "status", "--porcelain", "--untracked-files=no").stdout.strip():
        raise BisectError(f"the work tree {repo} has uncommitted changes: commit or stash them first "
                          f"(bisect judges commits, not the files as they are)")
    listed = _git(repo, "rev-list", "--first-parent", "--ancestry-path", "--reverse", f"{good_sha}..{bad_sha}")
    commits = listed.stdout.split()
    if not commits or commits[-1] != bad_sha:
        raise BisectError(f"no first-parent path from --good {good!r} to --bad {bad!r}: pass a --good on the "
                          f"first-parent history of --bad")
    return good_sha, bad_sha, commits


def next_probe(lo: int, hi: int, skipped: set[int]) -> int | None:
    """Index to probe strictly between lo (known good) and hi (known bad): the untested one nearest the middle
    (the lower on a tie); None when every commit between is skipped or there is none."""
    inside = [i for i in range(lo + 1, hi) if i not in skipped]
    if not inside:
        return None
    middle = (lo + hi) // 2
    return min(inside, key=lambda i: (abs(i - middle), i))


def search(commits: list[str], judge) -> tuple[list[int], list[tuple[int, str]]]:
    """Binary search with skips: judge(index) -> GOOD | BAD | SKIP, index -1 being good and len-1 bad.
    Returns (the indices the first bad commit can be, oldest first; one when found) and the judged indices."""
    lo, hi = -1, len(commits) - 1
    skipped: set[int] = set()
    judged = []
    while True:
        index = next_probe(lo, hi, skipped)
        if index is None:
            break
        verdict = judge(index)
        judged.append((index, verdict))
        if verdict == BAD:
            hi = index
        elif verdict == GOOD:
            lo = index
        else:
            skipped.add(index)
    return [i for i in range(lo + 1, hi + 1)], judged


# ----- judging one commit -----------------------------------------------------------------------------------------

def imports(tree: Path) -> tuple[bool, str]:
    """Whether the tree's package and CLI import; the last error line when not."""
    from .ab import tree_env
    done = subprocess.run([sys.executable, "-c", IMPORT_CHECK], capture_output=True, text=True, cwd=str(tree),
                          env=tree_env(tree), timeout=300)
    lines = (done.stderr or done.stdout).strip().splitlines()
    return done.returncode == 0, (lines[-1] if lines else f"exit {done.returncode}")


def summary_line(lines: list[str]) -> str:
    """The command's verdict line (the last starting PASS or FAIL), else its last line that says something: words,
    not a table's border or cells."""
    for line in reversed(lines):
        if line.startswith(("PASS", "FAIL")):
            return line
    for line in reversed(lines):
        if line and not "\u2500" <= line[0] <= "\u257f" and any(c.isalpha() for c in line):
            return line
    return ""


def parity_step(tree, settings: BisectSettings, role: str, subject: str) -> Step:
    """Run the tree's own `granite-bench parity`: exit 0 good, a failed check (exit 1, no crash) bad, else skip."""
    from .ab import tree_env
    start = time.perf_counter()
    ok, why = imports(tree.path)
    if not ok:
        return Step(role, tree.sha, subject, SKIP, f"does not import: {why}", time.perf_counter() - start)
    argv = [sys.executable, "-m", "granite_bench.cli", "parity", "--model", settings.model,
            *(["--layers", str(settings.layers)] if settings.layers else []), *settings.parity_args, "--no-save"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, cwd=str(tree.path), env=tree_env(tree.path),
                              timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return Step(role, tree.sha, subject, SKIP, f"parity ran past {COMMAND_TIMEOUT_S} s",
                    time.perf_counter() - start)
    seconds = time.perf_counter() - start
    out = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    err = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    crashed = any(line.startswith("Traceback") for line in err) or any(line.startswith("error:") for line in err)
    if done.returncode == 0:
        judgement = GOOD
    elif done.returncode == 1 and not crashed:
        judgement = BAD
    else:
        judgement = SKIP
    last = (err[-1] if judgement == SKIP and err else summary_line(out))[:200]
    return Step(role, tree.sha, subject, judgement, f"parity exit {done.returncode}: {last}", seconds,
                exit_code=done.returncode)


def gated_metric(settings: BisectSettings) -> str:
    """The timed column a step judges: decode_step_ms -> decode_step_cpu_ms on the CPU clock."""
    return settings.mode.replace("_ms", "_cpu_ms") if settings.clock == "cpu" else settings.mode


def timing_gate(settings: BisectSettings):
    """The compare gate's settings and sequential plan for these trials, looks, floor and alpha (BisectError when
    they make none)."""
    from .compare import CompareError, CompareSettings, check_timing_settings, sequential_plan
    compare = CompareSettings(baseline="", trials=settings.trials, reps=settings.reps, floor=settings.floor,
                              alpha=settings.alpha, looks=settings.looks, clock=settings.clock)
    try:
        check_timing_settings(compare)
    except CompareError as err:
        raise BisectError(str(err)) from None
    return compare, sequential_plan(compare)


def timing_step(good_tree, tree, settings: BisectSettings, role: str, subject: str) -> Step:
    """Time the tree against the good tree (paired A/B rounds, sequential looks) and gate the chosen metric; skip
    if it cannot run."""
    from ..results import stats
    from . import ab
    from .compare import sequential_stop
    start = time.perf_counter()
    probe = ["--model", settings.model, "--threads", str(settings.threads),
             *(["--layers", str(settings.layers)] if settings.layers else [])]
    (compare, plan), metric = timing_gate(settings), gated_metric(settings)
    try:
        result = ab.run_interleaved(good_tree, tree, trials=plan.max_rounds, reps=settings.reps, probe_args=probe,
                                    stop=sequential_stop(compare, plan, (metric,)))
    except ab.TreeError as err:
        if err.tree is good_tree:
            raise BisectError(f"the baseline commit {good_tree.sha[:12]} cannot be timed: "
                              f"{str(err).splitlines()[0]}") from None
        return Step(role, tree.sha, subject, SKIP, f"cannot be timed: {str(err).splitlines()[0][:200]}",
                    time.perf_counter() - start)
    look = plan.look_index(result.trials)
    _, (test,) = stats.sequential_look({metric: result.per_trial[metric]}, plan, look, settings.floor)
    judgement = BAD if test.verdict == stats.REGRESSION else GOOD
    evidence = (f"{metric} {test.baseline_median:.3g} -> {test.candidate_median:.3g} ms, x{test.ratio:.3f} "
                f"(90% CI {test.ci_low:.3f}-{test.ci_high:.3f}), p={test.p_adjusted:.2g} "
                f"(alpha {plan.alpha_at(look):.2g} at this look), {result.trials} paired rounds: {test.verdict}")
    return Step(role, tree.sha, subject, judgement, evidence, time.perf_counter() - start, ratio=test.ratio,
                ci_low=test.ci_low, ci_high=test.ci_high, p_adjusted=test.p_adjusted,
                baseline_median=test.baseline_median, candidate_median=test.candidate_median)


# ----- the whole search -------------------------------------------------------------------------------------------

def run_bisect(settings: BisectSettings, on_step=None) -> BisectResult:
    """Check the range and both ends, search, store the steps; on_step(step) after each one."""
    import contextlib
    from . import ab
    if settings.mode != PARITY and settings.mode not in TIMING_METRICS:
        raise BisectError(f"--metric must be one of {', '.join(TIMING_METRICS)}, got {settings.mode!r}")
    if settings.mode != PARITY:
        timing_gate(settings)
    repo = settings.repo
    good_sha, bad_sha, commits = check_range(repo, settings.good, settings.bad)
    steps: list[Step] = []

    def record(step: Step) -> Step:
        steps.append(step)
        if on_step is not None:
            on_step(step)
        return step

    with contextlib.ExitStack() as stack:
        good_tree = stack.enter_context(ab.code_tree(repo, good_sha))

        def judge_sha(sha: str, role: str) -> Step:
            with ab.code_tree(repo, sha) as tree:
                if settings.mode == PARITY:
                    return parity_step(tree, settings, role, subject_of(repo, sha))
                return timing_step(good_tree, tree, settings, role, subject_of(repo, sha))

        if settings.mode == PARITY:
            end = record(parity_step(good_tree, settings, "good-end", subject_of(repo, good_sha)))
            if end.judgement != GOOD:
                raise BisectError(f"the --good commit {good_sha[:12]} already fails parity ({end.evidence}): "
                                  f"pass an older --good")
        end = record(judge_sha(bad_sha, "bad-end"))
        if end.judgement == SKIP:
            raise BisectError(f"the --bad commit {bad_sha[:12]} cannot be judged ({end.evidence}): pass another --bad")
        if end.judgement == GOOD:
            what = ("passes parity: nothing to bisect, pass a --bad that fails it" if settings.mode == PARITY else
                    f"is not slower than --good ({end.evidence}): nothing to bisect, or the --good commit is already "
                    f"slow; pass an older --good")
            raise BisectError(f"the --bad commit {bad_sha[:12]} {what}")

        def judge(index: int) -> str:
            step = judge_sha(commits[index], "probe")
            return record(step).judgement

        indices, _ = search(commits, judge)
        candidates = [commits[i] for i in indices]
        first_bad = candidates[0] if len(candidates) == 1 else None
        confirmed = None
        parent = _git(repo, "rev-parse", f"{first_bad}^").stdout.strip() if first_bad else ""
        if settings.mode != PARITY and first_bad and parent != good_sha:
            # Each probe was judged against the good commit, and a noisy miss sends the search the wrong way:
            # time the answer against its own parent, which must be the slower-by-it pair.
            with ab.code_tree(repo, parent) as parent_tree, ab.code_tree(repo, first_bad) as tree:
                try:
                    step = timing_step(parent_tree, tree, settings, "confirm", subject_of(repo, first_bad))
                except BisectError as err:
                    step = Step("confirm", first_bad, subject_of(repo, first_bad), SKIP, str(err), 0.0)
            record(step)
            confirmed = None if step.judgement == SKIP else step.judgement == BAD
    result = BisectResult(good_sha, bad_sha, commits, steps, first_bad, candidates,
                          subject_of(repo, first_bad) if first_bad else "", confirmed)
    if settings.results_dir is not None:
        store_steps(settings, result)
    return result


def steps_frame(settings: BisectSettings, result: BisectResult):
    import pandas as pd
    rows = []
    for number, step in enumerate(result.steps, 1):
        rows.append({"step": number, **asdict(step), "mode": settings.mode, "good_sha": result.good_sha,
                     "bad_sha": result.bad_sha, "commits_in_range": len(result.commits),
                     "first_bad_sha": result.first_bad or "", "candidates": ",".join(result.candidates),
                     "answer_confirmed": {True: "yes", False: "no", None: "not run"}[result.confirmed]})
    return pd.DataFrame(rows)


def store_steps(settings: BisectSettings, result: BisectResult) -> list[Path]:
    from ..results.metadata import collect_run_metadata
    from ..results.store import ResultStore
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()}
    meta = collect_run_metadata(suite="bisect", device="cpu", dtype="float32", config=config, seed=0,
                                repo_dir=settings.repo)
    return ResultStore(settings.results_dir).write_run(meta, {"bisect_steps": steps_frame(settings, result)})


def step_line(step: Step) -> str:
    return f"{step.role:8} {step.sha[:12]} {step.judgement:4}  {step.evidence}  [{step.subject[:60]}] " \
           f"({step.seconds:.0f} s)"


def final_lines(result: BisectResult) -> list[str]:
    """git bisect's ending: '<sha> is the first bad commit' and its subject, or the commits it could be."""
    if result.first_bad:
        doubt = [] if result.confirmed is not False else [
            f"warning: {result.first_bad[:12]} is not measurably slower than its parent: a probe was likely misjudged "
            f"(noise); rerun with more --trials or on a quieter machine"]
        return doubt + [f"{result.first_bad} is the first bad commit", result.subject]
    return ["only skipped commits are left to test; the first bad commit could be any of:",
            *result.candidates]
