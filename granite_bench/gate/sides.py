"""The two sides of a comparison: stored runs (by run id or prefix) or a code tree (a git ref, `worktree`, a
folder), and their deterministic rows: a commit's clean stored runs, else the deterministic commands run in the
tree into a scratch store."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..results.store import CorruptResultFile, ResultStore
from . import ab
from .verdict import KEY_COLUMNS, CompareError

TREE_COMMAND_TIMEOUT_S = 1800
# The command names of a tree's CLI, read from its typer app (not from the rendering of its --help).
LIST_COMMANDS = ("import json, granite_bench.cli as cli; print(json.dumps(sorted("
                 "c.name or c.callback.__name__.replace('_', '-') for c in cli.app.registered_commands)))")


@dataclass
class Side:
    spec: str
    run_ids: list[str] = field(default_factory=list)   # stored runs giving its deterministic rows
    tree: ab.CodeTree | None = None
    source: str = ""                                     # where its deterministic rows came from
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)


def known_run_ids(store: ResultStore) -> list[str]:
    """Every run the store knows: those its files name, and those with a commit marker (whose files may be gone)."""
    runs = store.runs()
    return sorted((set(runs["run_id"]) if len(runs) else set()) | store.committed_runs())


def match_run_ids(store: ResultStore, spec: str) -> list[str] | None:
    """Run ids named by spec (comma-separated ids, or unique prefixes of the id or of its hash part, e.g.
    '6e3a0c43' of '20250101T000000Z-6e3a0c43'); None when some part names no stored run."""
    known = known_run_ids(store)
    found = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        hits = [r for r in known if r == part] or \
            [r for r in known if r.startswith(part) or r.partition("-")[2].startswith(part)]
        if len(hits) != 1:
            if len(hits) > 1:
                shown = ", ".join(hits[:4]) + (f" and {len(hits) - 4} more" if len(hits) > 4 else "")
                raise CompareError(f"{part!r} matches {len(hits)} stored runs ({shown}): give more of the run id")
            return None
        found.append(hits[0])
    return found or None


def check_run_tables(store: ResultStore, run_ids: list[str]) -> None:
    """CompareError naming the file when a deterministic table a run committed is missing or unreadable: a side
    whose results cannot be read cannot be judged (never read as 'no rows, no regression')."""
    for run_id in run_ids:
        for path in store.run_files(run_id):
            if path.parent.parent.name not in KEY_COLUMNS:
                continue
            table = path.parent.parent.name
            if not path.is_file():
                raise CompareError(f"cannot judge run {run_id}: its {table} file {path} is missing (its commit "
                                   f"marker lists it): restore the file or compare other runs")
            try:
                store.read_file(path)
            except CorruptResultFile as err:
                raise CompareError(f"cannot judge run {run_id}: its {table} file {path} is unreadable "
                                   f"({str(err.__cause__ or err).splitlines()[0]}): restore the file or compare "
                                   f"other runs") from None


def check_stored_specs(store: ResultStore, specs: list[str]) -> None:
    """Before anything heavy loads: each spec that names stored runs must name them unambiguously, and their
    committed deterministic tables must be readable (CompareError otherwise). Code trees are resolved later.
    Unreadable files of other runs are left for the comparison itself to report."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for spec in specs:
            _check_stored_spec(store, spec)


def _check_stored_spec(store: ResultStore, spec: str) -> None:
    if spec == ab.WORKTREE or (Path(spec) / "granite_bench").is_dir():
        return
    run_ids = match_run_ids(store, spec)
    if run_ids:
        check_run_tables(store, run_ids)


def read_runs(store: ResultStore, run_ids: list[str]) -> dict[str, pd.DataFrame]:
    check_run_tables(store, run_ids)
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
    runs = store.runs()
    if len(runs):
        clean = runs["git_dirty"].astype(str).str.lower().isin(["false", "0"])
        check_run_tables(store, sorted(runs.loc[(runs["git_sha"] == sha) & clean, "run_id"]))
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
    """Command names the tree's CLI offers (empty when its CLI cannot be imported)."""
    done = subprocess.run([sys.executable, "-c", LIST_COMMANDS], capture_output=True, text=True, cwd=str(tree),
                          env=ab.tree_env(tree), timeout=300)
    lines = done.stdout.strip().splitlines()
    return set(json.loads(lines[-1])) if done.returncode == 0 and lines else set()


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
