"""The README's example commands, parsed out of its code blocks: every `granite-bench` command passes its option
checks, and the cheap ones (plus the one-host torchrun example, exactly as written) run for real."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from granite_bench.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
# Examples that need something this machine or CI does not have: a user's checkpoint or prompts, other hosts.
NEEDS_USER_DATA = ("/path/to/", "<", "10.0.0.1", "my.txt")


def readme_commands() -> list[str]:
    """Every command line in the README's fenced code blocks that starts with granite-bench or torchrun (a trailing
    comment dropped, backslash continuations joined, `a && b` split)."""
    commands, block, joined = [], False, ""
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            block, joined = not block, ""
            continue
        if not block:
            continue
        line = joined + re.sub(r"\s+#.*$", "", line).strip()
        if line.endswith("\\"):
            joined = line[:-1] + " "
            continue
        joined = ""
        for part in line.split("&&"):
            part = part.strip()
            if part.startswith(("granite-bench ", "torchrun ")) or part == "granite-bench":
                commands.append(part)
    return commands


COMMANDS = readme_commands()
RUNNABLE = [c for c in COMMANDS if c.startswith("granite-bench") and not any(m in c for m in NEEDS_USER_DATA)]


def test_the_readme_has_the_examples_this_test_relies_on():
    assert "granite-bench parity" in COMMANDS
    assert "torchrun --standalone --nproc_per_node 2 -m granite_bench.cli parity --tp 2" in COMMANDS
    assert len(RUNNABLE) >= 10


@pytest.fixture
def stubbed_runs(monkeypatch):
    """The heavy run functions replaced by recorders: what reaches them passed every option check."""
    from granite_bench.accuracy import command as eval_command
    from granite_bench.parity import command as parity_command
    from granite_bench.perf import command as perf_command
    from granite_bench.gate import compare
    calls = []
    monkeypatch.setattr(parity_command, "run_parity_command", lambda args, *a: calls.append(args) or True)
    monkeypatch.setattr(perf_command, "run_perf_command", lambda args, *a: calls.append(args) or [])
    monkeypatch.setattr(eval_command, "run_eval_command", lambda args, *a: calls.append(args) or True)

    class Comparison:
        warnings: list = []  # compare prints these after its table

        def fails(self, fail_on):
            return False

    monkeypatch.setattr(compare, "run_compare", lambda settings, *a: calls.append(settings) or Comparison())
    monkeypatch.setattr(compare, "render", lambda *a: None)
    import pandas as pd
    from granite_bench.gate import calibrate
    monkeypatch.setattr(calibrate, "run_calibration", lambda settings, *a: calls.append(settings))
    monkeypatch.setattr(calibrate, "read_campaigns", lambda *a: pd.DataFrame(columns=["gate", "kind", "level"]))
    return calls


@pytest.mark.parametrize("command", RUNNABLE)
def test_readme_command_passes_its_option_checks(command, stubbed_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(README.parent)  # suite paths in the README are relative to the repository
    argv = shlex.split(command)[1:]
    if argv and argv[0] in ("parity", "perf", "eval", "compare", "results", "dashboard", "gate-power"):
        argv += ["--results-dir", str(tmp_path / "store")]
    if argv and argv[0] in ("results", "dashboard"):  # read the committed baselines (written before commit markers)
        shutil.copytree(README.parent / "results", tmp_path / "store")
    if argv and argv[0] == "dashboard":
        argv[argv.index("--out") + 1] = str(tmp_path / "dashboard")
    result = CliRunner().invoke(app, argv)
    absent = device_absent(argv)
    if absent:  # an example for a GPU or Neuron host: here it must be refused in one line naming the device
        assert result.exit_code == 2 and f"--device {absent}" in result.output, f"{command}\n{result.output}"
        return
    assert result.exit_code == 0, f"{command}\n{result.output}"
    if argv[0] in ("parity", "perf", "eval", "compare", "gate-power"):
        assert len(stubbed_runs) == 1  # it got past the checks to the run itself


def device_absent(argv: list[str]) -> str | None:
    """The --device an example asks for when this machine lacks it (found without torch), else None."""
    from granite_bench.runtime.hardware import cuda_problem, neuron_problem
    device = argv[argv.index("--device") + 1] if "--device" in argv else "cpu"
    problem = {"cuda": cuda_problem, "neuron": neuron_problem}.get(device, lambda: None)()
    return device if problem else None


def granite_bench() -> list[str]:
    found = shutil.which("granite-bench")
    return [found] if found else [sys.executable, "-m", "granite_bench.cli"]


def run(argv: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_cheap_readme_commands_run_for_real_into_the_default_results_dir(tmp_path):
    """The main job, then reading and drawing what it stored, as a user in an empty folder would (the perf grid
    with tiny settings appended)."""
    sequence = ["granite-bench parity",
                "granite-bench perf --batch-sizes 1 --buckets 32 --new-tokens 4 --rounds 1 --warmup 0 --baselines none "
                "--threads 1",
                "granite-bench results",
                'granite-bench results --sql "select model, dtype, max(worst_max_abs_err) from parity_summary '
                'group by all"',
                "granite-bench dashboard --out dashboard"]
    for command in sequence:
        done = run(granite_bench() + shlex.split(command)[1:], tmp_path)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    store = tmp_path / "granite-bench-results"
    assert len(list((store / "_commits").glob("*.json"))) == 2  # one parity run, one perf point
    assert (tmp_path / "dashboard" / "index.html").exists()


def test_readme_torchrun_example_passes_as_written(tmp_path):
    command = "torchrun --standalone --nproc_per_node 2 -m granite_bench.cli parity --tp 2"
    assert command in COMMANDS
    torchrun = shutil.which("torchrun")
    argv = ([torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]) + shlex.split(command)[1:]
    done = run(argv, tmp_path, timeout=480)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "TP-2 vs TP-1 max |Δlogit|" in done.stdout and "PASS" in done.stdout
    assert done.stdout.count("parity tiny-gqa") == 1  # only rank 0 reports
    assert len(list((tmp_path / "granite-bench-results" / "_commits").glob("*.json"))) == 1
