"""Code trees and their interleaved A/B timing.

A side of a comparison that is code (a git ref, HEAD, or the work tree as it is) becomes a folder holding a
granite_bench package: the repository itself for `worktree`, else a detached `git worktree` of the ref in a temp
folder, removed afterwards. The trees are timed by one server subprocess (ab_probe.py) in rounds: every round forks a
fresh process per tree and times them in lockstep, each prefill and decode step run in every tree in turn with the
order rotated from call to call, so what the machine's other processes do to a step's time falls on every side alike
within milliseconds, and no process's memory layout stays with one side (ab_probe.py says why). Per round and tree
each metric is the median of its repetitions, on two clocks: wall time and the trial process's CPU time. A caller
may stop the rounds early, after any complete round (the sequential gate's looks).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .ab_probe import PREFIX

PROBE_SCRIPT = Path(__file__).resolve().with_name("ab_probe.py")
WORKTREE = "worktree"      # the repository's files as they are, uncommitted changes included

# Timed metrics, per-trial medians: wall clock and the trial thread's CPU time (time.thread_time). Which of them the
# gate judges is the gate's choice (stats.GateSettings.clock). Tail metrics: percentiles over every repetition, reported.
WALL_METRICS = ("decode_step_ms", "prefill_ms")
CPU_METRICS = ("decode_step_cpu_ms", "prefill_cpu_ms")
TIMED_METRICS = WALL_METRICS + CPU_METRICS
GATED_METRICS = WALL_METRICS      # what a pooled (pre-paired) comparison of wall time judges; bisect's metrics
PROBE_KEYS = {"decode_step_ms": "decode_s", "prefill_ms": "prefill_s", "decode_step_cpu_ms": "decode_cpu_s",
              "prefill_cpu_ms": "prefill_cpu_s"}


class TreeError(RuntimeError):
    """A code tree could not be made or timed; the message names it."""

    def __init__(self, message: str, tree: "CodeTree | None" = None):
        super().__init__(message)
        self.tree = tree


@dataclass
class CodeTree:
    label: str            # what the user passed: a ref, HEAD, worktree, or a folder
    path: Path            # folder holding granite_bench/ and suites/
    sha: str              # commit sha, or 'unknown'
    dirty: bool


@dataclass
class ABResult:
    trials: int
    reps: int
    order: list[str]                                   # 'A'/'B' in the order the trials ran
    per_trial: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # gated metrics
    tails: dict[str, tuple[float, float]] = field(default_factory=dict)                  # reported only


def git(repo: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise TreeError(f"git {' '.join(args)} failed in {repo}: {done.stderr.strip()}")
    return done.stdout.strip() if done.returncode == 0 else ""


def repo_root(start: Path | None = None) -> Path | None:
    """The git work tree holding `start` (default: the installed package), or None."""
    start = start or Path(__file__).resolve().parents[2]
    done = subprocess.run(["git", "-C", str(start), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    return Path(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else None


def resolve_commit(repo: Path, ref: str) -> str | None:
    """Full sha of `ref` in repo, or None when it names no commit."""
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def is_tree_spec(repo: Path | None, spec: str) -> bool:
    """Whether `spec` names code: 'worktree', a folder with granite_bench/, or a git ref."""
    if spec == WORKTREE or (Path(spec) / "granite_bench").is_dir():
        return True
    return repo is not None and resolve_commit(repo, spec) is not None


@contextlib.contextmanager
def code_tree(repo: Path | None, spec: str):
    """Yield a CodeTree for spec; a git ref is checked out in a temp worktree that is removed on exit."""
    if spec == WORKTREE or (Path(spec) / "granite_bench").is_dir():
        path = repo if spec == WORKTREE else Path(spec).resolve()
        if path is None:
            raise TreeError("'worktree' needs a git repository: run from inside one")
        sha = git(path, "rev-parse", "HEAD", check=False) or "unknown"
        dirty = bool(git(path, "status", "--porcelain", "--untracked-files=no", check=False))
        yield CodeTree(spec, path, sha, dirty)
        return
    if repo is None:
        raise TreeError(f"{spec!r} is neither a stored run id nor a folder, and there is no git repository here")
    sha = resolve_commit(repo, spec)
    if sha is None:
        raise TreeError(f"{spec!r} is neither a stored run id nor a commit of {repo}")
    parent = Path(tempfile.mkdtemp(prefix="granite-bench-tree-"))
    path = parent / sha[:12]
    git(repo, "worktree", "add", "--detach", "--force", str(path), sha)
    try:
        yield CodeTree(spec, path, sha, False)
    finally:
        git(repo, "worktree", "remove", "--force", str(path), check=False)
        shutil.rmtree(parent, ignore_errors=True)
        git(repo, "worktree", "prune", check=False)


def tree_env(tree: Path) -> dict:
    """Environment whose `import granite_bench` finds the tree's copy (PYTHONPATH beats the editable install)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class ProbeServer:
    """The ab_probe.py server: forks fresh processes for every round, one per tree the round names."""

    def __init__(self, probe_args: list[str], log_dir: Path):
        self.log = open(log_dir / f"probe-{os.getpid()}-{id(self)}.log", "w+")
        env = dict(os.environ)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.proc = subprocess.Popen([sys.executable, str(PROBE_SCRIPT), *probe_args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env)

    def receive(self, trees: list[CodeTree] | None = None) -> dict:
        """The server's next message; an error names the tree of the round that failed (its 'side')."""
        trees = trees or []
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                message = json.loads(line[len(PREFIX):])
                if "error" in message:
                    side = message.get("side")
                    tree = trees[side] if side is not None and side < len(trees) else None
                    where = f"{tree.label} ({tree.path})" if tree is not None else "the timing server"
                    raise TreeError(f"timing probe failed in {where}: {message['error']}\n"
                                    f"{message.get('traceback', '')}", tree)
                return message
        self.log.seek(0)
        tail = self.log.read()[-2000:]
        raise TreeError(f"the timing server exited ({self.proc.wait()}) without answering:\n{tail}",
                        trees[0] if len(trees) == 1 else None)

    def round(self, trees: list[CodeTree], reps: int, seed: int, first: int = 0) -> list[dict]:
        """One lockstep round over `trees` (ab_probe.lockstep_round), starting with trees[first]; per tree its
        per-call seconds."""
        self.proc.stdin.write(json.dumps({"trees": [str(t.path) for t in trees], "reps": reps, "seed": seed,
                                          "first": first}) + "\n")
        self.proc.stdin.flush()
        return self.receive(trees)["sides"]

    def trial(self, tree: CodeTree, reps: int, seed: int) -> dict:
        """One tree alone in a fresh process."""
        return self.round([tree], reps, seed)[0]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def trial_order(trials: int, sides: tuple[str, ...] = ("A", "B")) -> list[str]:
    """Every side once per round, the order rotated each round: AB, BA, AB, ... for two sides (a lockstep round's
    order at its first timed call; the calls after it rotate on)."""
    order = []
    for round_ in range(trials):
        shift = round_ % len(sides)
        order += list(sides[shift:] + sides[:shift])
    return order


@dataclass
class SideTimings:
    ready: dict                                       # which granite_bench its trials imported, torch, threads
    per_trial: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in TIMED_METRICS})
    every_step_ms: list[float] = field(default_factory=list)


def time_trees(trees: dict[str, CodeTree], trials: int = 8, reps: int = 32, probe_args: list[str] | None = None,
               on_trial=None, stop=None) -> tuple[dict[str, SideTimings], list[str]]:
    """Time several trees in up to `trials` lockstep rounds (ab_probe.py), every round in fresh processes forked
    by one server, its first call rotated over the trees; per round and tree the median of its repetitions.

    stop(timings, rounds) -> bool, when given, is asked after every round; True ends the rounds there."""
    probe_args = list(probe_args or [])
    sides = tuple(trees)
    listed = [trees[s] for s in sides]
    log_dir = Path(tempfile.mkdtemp(prefix="granite-bench-ab-"))
    server = ProbeServer(probe_args, log_dir)
    timings: dict[str, SideTimings] = {}
    order: list[str] = []
    try:
        ready = server.receive()
        # a warm-up round (it may create the preset's cached weights), not recorded
        for side, out in zip(sides, server.round(listed, 1, seed=-1)):
            timings[side] = SideTimings(ready={"granite_bench": out["granite_bench"], "torch": ready["torch"],
                                               "threads": ready["threads"]})
        for round_ in range(trials):
            first = round_ % len(sides)
            for side, out in zip(sides, server.round(listed, reps, seed=round_, first=first)):
                for metric, key in PROBE_KEYS.items():
                    timings[side].per_trial[metric].append(1e3 * float(np.median(out[key])))
                timings[side].every_step_ms += [1e3 * s for s in out["decode_s"]]
            order += list(sides[first:] + sides[:first])
            if on_trial is not None:
                on_trial(len(order), trials * len(sides))
            if stop is not None and stop(timings, round_ + 1):
                break
    finally:
        server.close()
        shutil.rmtree(log_dir, ignore_errors=True)
    return timings, order


def ab_result(timings: dict[str, SideTimings], baseline: str, candidate: str, order: list[str], reps: int) -> ABResult:
    """Baseline-vs-candidate view of timings: gated per-trial medians and reported tail percentiles."""
    base, cand = timings[baseline], timings[candidate]
    result = ABResult(trials=len(base.per_trial["decode_step_ms"]), reps=reps, order=order)
    for metric in TIMED_METRICS:
        result.per_trial[metric] = (base.per_trial[metric], cand.per_trial[metric])
    for q in (90, 99):
        result.tails[f"decode_step_ms_p{q}"] = (float(np.percentile(base.every_step_ms, q)),
                                                float(np.percentile(cand.every_step_ms, q)))
    return result


def run_interleaved(baseline: CodeTree, candidate: CodeTree, trials: int = 8, reps: int = 32,
                    probe_args: list[str] | None = None, on_trial=None, stop=None) -> ABResult:
    """Time baseline (A) and candidate (B) interleaved, AB BA AB ..., and compare them; stop(per_trial, rounds),
    asked after every round with the baseline-vs-candidate values so far, may end the trials early."""
    def pair_stop(timings, rounds):
        return stop({m: (timings["A"].per_trial[m], timings["B"].per_trial[m]) for m in TIMED_METRICS}, rounds)
    timings, order = time_trees({"A": baseline, "B": candidate}, trials, reps, probe_args, on_trial,
                                pair_stop if stop is not None else None)
    return ab_result(timings, "A", "B", order, reps)
