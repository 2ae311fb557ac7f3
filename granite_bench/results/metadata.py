"""Run metadata: the columns every result row carries (no torch import here)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import secrets
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

# Schema version per table. Bump a table's number when its columns change
# meaning or are removed; readers union all versions by column name.
SCHEMA_VERSION: dict[str, int] = {
    "runs": 1,
    "parity_positions": 1,
    "parity_summary": 1,
    "perf_samples": 1,
    "perf_summary": 1,
    "eval_samples": 1,
    "eval_summary": 1,
    "comparisons": 1,
    "bug_matrix": 1,
}

# Distributions whose versions are recorded with every run.
VERSIONED_PACKAGES = (
    "granite-bench",
    "torch",
    "transformers",
    "lm-eval",
    "numpy",
    "pandas",
    "pyarrow",
    "duckdb",
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RunMetadata:
    run_id: str
    utc_time: str
    git_sha: str
    git_dirty: bool
    package_versions: str
    machine_fingerprint: str
    machine: str
    suite: str
    device: str
    dtype: str
    config_hash: str
    config_json: str
    seed: int

    def columns(self, table: str) -> dict:
        """Every metadata field plus the table's schema_version."""
        if table not in SCHEMA_VERSION:
            raise ValueError(
                f"unknown result table {table!r}; register it in SCHEMA_VERSION "
                f"(known: {', '.join(sorted(SCHEMA_VERSION))})"
            )
        columns = dataclasses.asdict(self)
        columns["schema_version"] = SCHEMA_VERSION[table]
        return columns


def metadata_column_names() -> list[str]:
    """Names of the columns RunMetadata.columns() adds, in order."""
    return [f.name for f in dataclasses.fields(RunMetadata)] + ["schema_version"]


def new_run_id(now: datetime | None = None) -> str:
    """'YYYYmmddTHHMMSSZ-xxxxxxxx': sorts by UTC start time, random suffix."""
    now = now or datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)


def iso_utc(now: datetime) -> str:
    """ISO 8601 with millisecond precision and a trailing Z."""
    return now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def canonical_json(config: dict) -> str:
    """Key-order independent JSON; values JSON cannot hold are written with str()."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: dict) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def _git(repo_dir: Path, *args: str) -> str | None:
    """Output of a git command, or None when git or the repository is unavailable."""
    try:
        done = subprocess.run(
            ["git", "-C", str(repo_dir), *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout


def default_repo_dir() -> Path:
    """The package's repository root when it is a git work tree, else cwd."""
    if (REPO_ROOT / ".git").exists():
        return REPO_ROOT
    return Path.cwd()


def git_state(repo_dir: Path) -> tuple[str, bool]:
    """(HEAD sha or 'unknown', whether tracked files differ from HEAD)."""
    head = _git(repo_dir, "rev-parse", "HEAD")
    sha = head.strip() if head and head.strip() else "unknown"
    # Untracked files are left out: result files written into the work tree
    # must not mark the next run dirty.
    status = _git(repo_dir, "status", "--porcelain", "--untracked-files=no")
    dirty = bool(status and status.strip())
    return sha, dirty


def package_versions() -> str:
    """JSON of installed versions (importlib.metadata only; missing -> null)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return json.dumps(versions, sort_keys=True)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown-cpu"


def _memory_gib() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) * 1024 / 2**30)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    except (ValueError, OSError, AttributeError):
        return 0


def machine_description() -> tuple[str, str]:
    """(short fingerprint, human-readable description) of this machine."""
    cpu = _cpu_model()
    cores = os.cpu_count() or 0
    memory = _memory_gib()
    arch = platform.machine()
    system = platform.system()
    key = "|".join([cpu, str(cores), str(memory), arch, system])
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:12]
    readable = f"{arch} {cpu} {cores} cores {memory} GiB {system}"
    return fingerprint, readable


def collect_run_metadata(
    *,
    suite: str,
    device: str,
    dtype: str,
    config: dict,
    seed: int,
    repo_dir: Path | None = None,
) -> RunMetadata:
    """Gather everything a result row must carry, once per run."""
    now = datetime.now(timezone.utc)
    sha, dirty = git_state(Path(repo_dir) if repo_dir is not None else default_repo_dir())
    fingerprint, machine = machine_description()
    return RunMetadata(
        run_id=new_run_id(now),
        utc_time=iso_utc(now),
        git_sha=sha,
        git_dirty=dirty,
        package_versions=package_versions(),
        machine_fingerprint=fingerprint,
        machine=machine,
        suite=suite,
        device=device,
        dtype=dtype,
        config_hash=config_hash(config),
        config_json=canonical_json(config),
        seed=int(seed),
    )
