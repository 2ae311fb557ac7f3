"""The wheel ships every suite file (the canary's weights included) as package data; installed into a fresh venv (no
system site packages, the CPU build of torch first, as the README says; nightly: installing torch and the rest takes
minutes), it runs parity, perf, eval and dashboard from a folder outside the repository: its results land where the
user runs, and nothing is written into the installed package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TORCH_PIN = "torch==2.13.0"   # the CPU build (.ci/run and the README install the same)


def run(cmd: list[str], cwd: Path, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def file_set(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The package's wheel, built from a copy of the repository's files (no dependencies)."""
    root = tmp_path_factory.mktemp("wheel")
    env = clean_env()
    source = root / "source"   # a copy: setuptools' build/ folder must not leak stale modules into the wheel
    shutil.copytree(REPO / "granite_bench", source / "granite_bench", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    built = run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                 "-w", str(root / "dist")], root, env)
    assert built.returncode == 0, built.stderr[-2000:]
    return next((root / "dist").glob("granite_bench-*.whl"))


def test_the_wheel_ships_every_suite_file_as_package_data(wheel):
    shipped = set(zipfile.ZipFile(wheel).namelist())
    suites = REPO / "granite_bench" / "suites"
    expected = {f"granite_bench/{p.relative_to(REPO / 'granite_bench')}" for p in suites.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
    assert "granite_bench/suites/models/canary/model.safetensors" in expected
    assert expected <= shipped, sorted(expected - shipped)[:10]


@pytest.fixture(scope="module")
def installed(tmp_path_factory, wheel):
    """(venv bin folder, installed package folder, clean environment): one venv for the module."""
    root = tmp_path_factory.mktemp("venv")
    env = clean_env()
    started = time.monotonic()
    venv = root / "venv"
    made = run([sys.executable, "-m", "venv", str(venv)], root, env)   # no --system-site-packages
    assert made.returncode == 0, made.stderr[-2000:]
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile"]  # no .pyc pass: minutes
    for args in ([TORCH_PIN], [str(wheel)]):
        done = run(pip + args, root, env)
        assert done.returncode == 0, done.stderr[-2000:]
    where = run([str(venv / "bin" / "python"), "-c", "import granite_bench, os; "
                 "print(os.path.dirname(granite_bench.__file__))"], root, env)
    package = Path(where.stdout.strip())
    print(f"wheel built and installed in {time.monotonic() - started:.0f} s")
    yield venv / "bin", package, env


@pytest.mark.nightly
def test_installed_wheel_runs_every_command_from_outside_the_repository(installed, tmp_path):
    bin_dir, package, env = installed
    assert venv_owns(package, bin_dir.parent), f"granite_bench imported from {package}, not the venv"
    assert (package / "suites" / "parity" / "tolerances.yaml").is_file()
    assert (package / "suites" / "models" / "canary" / "model.safetensors").is_file()
    before = file_set(package)
    work = tmp_path / "work"
    work.mkdir()
    env = {**env, "GRANITE_BENCH_CACHE": str(tmp_path / "cache")}
    cli = str(bin_dir / "granite-bench")
    commands = [
        [cli, "parity", "--layers", "1", "--num-tokens", "4", "--batch-size", "2", "--buckets", "32,64,128"],
        [cli, "perf", "--layers", "1", "--batch-sizes", "1", "--buckets", "32", "--new-tokens", "4", "--rounds", "1",
         "--warmup", "0", "--baselines", "none", "--threads", "1"],
        [cli, "eval", "--limit", "2", "--batch-size", "4"],
        [cli, "dashboard"],
    ]
    for cmd in commands:
        started = time.monotonic()
        done = run(cmd, work, env)
        print(f"{cmd[1]}: exit {done.returncode} in {time.monotonic() - started:.0f} s")
        assert done.returncode == 0, f"{' '.join(cmd[1:])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    tables = {p.parent.parent.name for p in work.rglob("*.parquet")}   # <table>/schema_version=N/<run>.parquet
    assert {"parity_summary", "perf_summary", "eval_summary"} <= tables
    assert any(p.name == "index.html" for p in work.rglob("index.html"))
    assert any((tmp_path / "cache").iterdir()), "the checkpoint cache was not used"
    assert file_set(package) == before, "a command wrote into the installed package"


def venv_owns(package: Path, venv: Path) -> bool:
    return venv.resolve() in package.resolve().parents
