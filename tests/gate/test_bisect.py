"""`granite-bench bisect` on a synthetic history made here: a copy of the package, then a chain of commits where one
does not import, one slows the decode step down and a later one breaks parity (the residual multiplier)."""

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

import granite_bench
from granite_bench.cli import app
from granite_bench.gate import bisect
from granite_bench.gate.bisect import BAD, GOOD, SKIP, BisectError, BisectSettings, run_bisect, search
from granite_bench.results.store import ResultStore

PACKAGE = Path(granite_bench.__file__).resolve().parent
SPIN_S = 0.02             # CPU seconds of busy work per decode step; tiny-gqa's own step is ~2 ms on one thread


# ----- the search itself (no git, no model) ---------------------------------------------------------------------

def judge_by(verdicts: dict[int, str], first_bad: int):
    asked = []

    def judge(index: int) -> str:
        asked.append(index)
        return verdicts.get(index, BAD if index >= first_bad else GOOD)
    return judge, asked


@pytest.mark.parametrize("first_bad", range(10))
def test_search_finds_every_position_of_the_first_bad_commit_in_log2_probes(first_bad):
    judge, asked = judge_by({}, first_bad)
    found, _ = search([f"c{i}" for i in range(10)], judge)
    assert found == [first_bad]
    assert len(asked) <= 4 and 9 not in asked          # the bad end is known, never probed again


def test_search_goes_around_a_skipped_commit_at_the_middle():
    judge, asked = judge_by({4: SKIP}, first_bad=6)
    found, judged = search([f"c{i}" for i in range(10)], judge)
    assert found == [6]
    assert asked[0] == 4 and (4, SKIP) in judged


def test_search_leaves_the_range_open_when_only_skipped_commits_remain():
    judge, _ = judge_by({3: SKIP, 4: SKIP}, first_bad=4)
    found, _ = search([f"c{i}" for i in range(8)], judge)
    assert found == [3, 4, 5]                           # 5 is bad; 3 or 4 may be first: "could be any of"


def test_a_parity_step_cites_the_verdict_line_not_the_tables_border():
    out = ["parity tiny-gqa float32", "│ 0 │ 1.2e-05 │ pass │", "FAIL prompt 0 diverges at position 3",
           "per-layer residual stream at that position", "┏━━━┓", "│ x │", "└───┘"]
    assert bisect.summary_line(out) == "FAIL prompt 0 diverges at position 3"
    assert bisect.summary_line(["done", "│ x │", "└───┘"]) == "done"


def test_an_answer_not_slower_than_its_parent_is_printed_with_a_warning_before_the_git_bisect_lines():
    result = bisect.BisectResult("g" * 40, "b" * 40, ["a" * 40, "b" * 40], [], "a" * 40, ["a" * 40], "subject",
                                 confirmed=False)
    lines = bisect.final_lines(result)
    assert lines[0].startswith("warning:") and lines[1:] == ["a" * 40 + " is the first bad commit", "subject"]
    assert bisect.final_lines(bisect.BisectResult("g", "b", [], [], None, ["x", "y"]))[1:] == ["x", "y"]


# ----- a synthetic history ----------------------------------------------------------------------------------------

def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t", *args],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def edit(repo: Path, relative: str, old: str, new: str) -> None:
    path = repo / "granite_bench" / relative
    text = path.read_text()
    assert text.count(old) == 1, f"the planted change no longer applies to {relative}: {old!r}"
    path.write_text(text.replace(old, new))


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def history(tmp_path_factory, tiny_model_dir):
    """name -> sha of: good, harmless-1, harmless-2, no-import, harmless-3, slowdown, parity-break, harmless-4."""
    repo = tmp_path_factory.mktemp("bisect-history") / "repo"
    shutil.copytree(PACKAGE, repo / "granite_bench", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    shas = {"good": commit(repo, "the package as it is")}
    for name in ("harmless-1", "harmless-2"):
        (repo / f"{name}.txt").write_text(name)
        shas[name] = commit(repo, name)
    (repo / "granite_bench" / "broken_import.py").write_text("this is not python\n")
    init = repo / "granite_bench" / "__init__.py"
    init.write_text(init.read_text() + "\nfrom . import broken_import  # planted: the package does not import\n")
    shas["no-import"] = commit(repo, "planted: the package does not import")
    (repo / "granite_bench" / "broken_import.py").unlink()
    init.write_text(init.read_text().replace("\nfrom . import broken_import  # planted: the package does not "
                                             "import\n", ""))
    shas["harmless-3"] = commit(repo, "harmless-3: imports again")
    edit(repo, "runtime/runner.py", "        rows = len(next_ids)\n",
         f"        spin = __import__('time').thread_time() + {SPIN_S}  # planted slowdown\n"
         f"        while __import__('time').thread_time() < spin:\n            pass\n        rows = len(next_ids)\n")
    shas["slowdown"] = commit(repo, "planted: busy work in the decode step")
    edit(repo, "model/modeling_granite.py", "        return self.mlp(normed)",
         "        return 1.5 * self.mlp(normed)")
    shas["parity-break"] = commit(repo, "planted: the MLP branch scaled wrong")
    (repo / "harmless-4.txt").write_text("4")
    shas["harmless-4"] = commit(repo, "harmless-4")
    prompts = repo.parent / "prompts.txt"
    prompts.write_text("The capital of France is\n")
    return repo, shas, prompts


def settings_for(repo: Path, shas: dict, mode: str, prompts: Path, results_dir=None, **changes) -> BisectSettings:
    return BisectSettings(good=shas["good"], bad=shas["harmless-4"], repo=repo, mode=mode, trials=8, looks=1,
                          reps=8,
                          parity_args=["--num-tokens", "4", "--batch-size", "1", "--prompts", str(prompts)],
                          results_dir=results_dir, **changes)


@pytest.mark.nightly
def test_bisect_by_decode_time_finds_the_planted_slowdown_and_skips_the_commit_that_does_not_import(
        history, tmp_path):
    repo, shas, prompts = history
    lines = []
    result = run_bisect(settings_for(repo, shas, "decode_step_ms", prompts, results_dir=tmp_path),
                        on_step=lambda step: lines.append(bisect.step_line(step)))
    assert result.first_bad == shas["slowdown"], "\n".join(lines)
    assert bisect.final_lines(result) == [f"{shas['slowdown']} is the first bad commit",
                                          "planted: busy work in the decode step"]
    judged = {s.sha: s.judgement for s in result.steps}
    assert judged[shas["no-import"]] == SKIP and judged[shas["slowdown"]] == BAD
    assert judged[shas["harmless-4"]] == BAD                   # the bad end is checked first
    assert result.confirmed is True and result.steps[-1].role == "confirm"   # against its own parent too
    slow = next(s for s in result.steps if s.sha == shas["slowdown"])
    assert slow.ratio > 1.5 and slow.candidate_median > slow.baseline_median + 1e3 * SPIN_S / 2
    stored = ResultStore(tmp_path).read("bisect_steps")
    assert list(stored["sha"]) == [s.sha for s in result.steps]
    assert set(stored["first_bad_sha"]) == {shas["slowdown"]} and set(stored["schema_version"]) == {1}


def test_bisect_by_parity_finds_the_planted_residual_change(history):
    repo, shas, prompts = history
    lines = []
    result = run_bisect(settings_for(repo, shas, bisect.PARITY, prompts),
                        on_step=lambda step: lines.append(bisect.step_line(step)))
    assert result.first_bad == shas["parity-break"], "\n".join(lines)
    judged = {s.sha: s.judgement for s in result.steps}
    assert judged[shas["good"]] == GOOD and judged[shas["no-import"]] == SKIP
    assert judged[shas["slowdown"]] == GOOD                     # slower, but parity holds
    assert bisect.final_lines(result)[-1] == "planted: the MLP branch scaled wrong"


def test_a_good_commit_that_already_fails_parity_is_refused(history):
    repo, shas, prompts = history
    with pytest.raises(BisectError, match="already fails parity"):
        run_bisect(replace(settings_for(repo, shas, bisect.PARITY, prompts), good=shas["parity-break"]))


# ----- bad input through the command line: one line, exit 2 ---------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--good", "no-such-rev", "--bad", "HEAD"], "names no commit"),
    (["--good", "HEAD", "--bad", "HEAD~3"], "swap --good and --bad"),
    (["--good", "HEAD", "--bad", "HEAD"], "same commit"),
    (["--good", "HEAD~1", "--bad", "HEAD", "--metric", "tpot"], "--metric must be one of"),
    (["--good", "HEAD~1", "--bad", "HEAD", "--metric", "prefill_ms", "--parity"], "not both"),
    (["--good", "HEAD~1", "--bad", "HEAD", "--trials", "12", "--looks", "3"], "raise --trials or lower --looks"),
    (["--good", "HEAD~1", "--bad", "HEAD", "--clock", "process"], "--clock must be cpu or wall"),
])
def test_bad_ranges_and_options_are_one_line_exit_2(history, monkeypatch, tmp_path, args, message):
    repo, _, _ = history
    monkeypatch.chdir(repo)
    result = CliRunner().invoke(app, ["bisect", *args, "--results-dir", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_dirty_tree_is_refused(history, monkeypatch):
    repo, _, _ = history
    monkeypatch.chdir(repo)
    runner = repo / "granite_bench" / "runtime" / "runner.py"
    before = runner.read_text()
    runner.write_text(before + "\n# an uncommitted edit\n")
    try:
        result = CliRunner().invoke(app, ["bisect", "--good", "HEAD~2", "--bad", "HEAD", "--no-save"])
    finally:
        runner.write_text(before)
    assert result.exit_code == 2 and "uncommitted changes" in result.output, result.output
