"""Run metadata: the columns every result row carries (no torch import here)."""

from __future__ import annotations

import dataclasses
import fnmatch
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
    "perf_summary": 2,   # 2: ceilings stream past the last-level cache from huge pages (decode_frac_* changed
                         # meaning); CPU-time latencies and the CPU's kind added
    "eval_samples": 1,
    "eval_summary": 1,
    "comparisons": 1,
    "bug_matrix": 1,
    "bisect_steps": 1,
    "gate_power": 1,
    "load_points": 1,
}

# Per table, beside its schema version: the direction of every numeric or boolean result column. "lower" / "higher"
# say which way is better; GATED ones are judged by `granite-bench compare` (a worse value is a regression), the
# others are shown and trended only; None: a key or context column with no better direction. Names may be fnmatch
# patterns. The commands refuse to store a numeric column without a declaration (require_directions).
GATED, SHOWN = True, False
METRIC_DIRECTIONS: dict[str, dict[str, tuple[str | None, bool]]] = {
    "parity_summary": {
        "passed": ("higher", GATED), "divergence_acceptable": ("higher", GATED),
        "greedy_match_rate": ("higher", GATED), "worst_topk_overlap": ("higher", GATED),
        "worst_err_all": ("lower", GATED), "worst_err_top5": ("lower", GATED), "worst_max_abs_err": ("lower", GATED),
        "worst_max_rel_err": ("lower", GATED), "worst_kl_ref_impl": ("lower", GATED),
        "n_failed": ("lower", SHOWN), "n_diverged_rows": ("lower", SHOWN),
        "n_unacceptable_divergences": ("lower", SHOWN), "tp_vs_tp1_max_abs_diff": ("lower", GATED),
        "n_routing_near_ties": ("lower", SHOWN),   # failing positions accepted as MoE router near-ties
        "compile_seconds_total": ("lower", SHOWN),
        "run_passed": (None, SHOWN), "tp_degree": (None, SHOWN), "compiled": (None, SHOWN), "prompt": (None, SHOWN),
        "prompt_len": (None, SHOWN), "num_tokens": (None, SHOWN), "n_positions": (None, SHOWN),
        "*_position": (None, SHOWN), "compiled_graphs": (None, SHOWN), "fail_layer": (None, SHOWN),
        "layers": (None, SHOWN), "first_failed": (None, SHOWN), "first_divergence": (None, SHOWN),
        "divergence_gap": (None, SHOWN), "num_layers": (None, SHOWN), "batch_size": (None, SHOWN),
        "seq_len": (None, SHOWN),
        "worst_err_*": ("lower", GATED),   # one per k of the tolerance map (err_top50 for bf16, ...)
        # the rtol each k was judged with, and HF's own error in the run's dtype when the profile was calibrated on it
        "rtol_*": (None, SHOWN), "framework_worst_err_*": (None, SHOWN), "divergence_tolerance": (None, SHOWN),
        "framework_divergence_gap": (None, SHOWN),
        # parity --endpoint: served top-K log-probabilities against the reference (parity/topk_logprobs.py)
        "worst_logprob_err": ("lower", GATED), "worst_token_logprob_err": ("lower", GATED),
        "min_ref_top1_in_served": ("higher", GATED), "worst_served_top1_rank": ("lower", SHOWN),
        "top_k": (None, SHOWN),
    },
    "parity_positions": {
        "max_abs_err": ("lower", SHOWN), "mean_abs_err": ("lower", SHOWN), "max_rel_err": ("lower", SHOWN),
        "kl_ref_impl": ("lower", SHOWN), "err_all": ("lower", SHOWN), "err_top5": ("lower", SHOWN),
        "top1_match": ("higher", SHOWN), "topk_overlap": ("higher", SHOWN), "passed": ("higher", SHOWN),
        "tp_degree": (None, SHOWN), "compiled": (None, SHOWN), "prompt": (None, SHOWN), "position": (None, SHOWN),
        "expected_top1_prob": (None, SHOWN), "layers": (None, SHOWN), "err_*": ("lower", SHOWN),
        "num_layers": (None, SHOWN), "batch_size": (None, SHOWN), "seq_len": (None, SHOWN),
        "logprob_err": ("lower", SHOWN), "token_logprob_err": ("lower", SHOWN),
        "ref_top1_in_served": ("higher", SHOWN), "served_top1_rank": ("lower", SHOWN), "top_k": (None, SHOWN),
        "routing_near_tie": (None, SHOWN),
    },
    "eval_summary": {
        "passed": ("higher", GATED), "argmax_agreement": ("higher", GATED),
        "generation_agreement": ("higher", GATED), "max_abs_delta_loglik": ("lower", GATED),
        "mean_abs_delta_loglik": ("lower", GATED),
        # impl_value's direction depends on the metric named beside it: compare splits it into these two
        "impl_accuracy": ("higher", GATED), "impl_perplexity": ("lower", GATED),
        "impl_value": (None, SHOWN), "ref_value": (None, SHOWN), "impl_stderr": (None, SHOWN),
        "ref_stderr": (None, SHOWN), "difference": (None, SHOWN), "n_docs": (None, SHOWN),
        "n_requests": (None, SHOWN), "truncated_requests": ("lower", SHOWN), "tp_degree": (None, SHOWN),
        "num_fewshot": (None, SHOWN), "limit": (None, SHOWN),
    },
    "eval_samples": {
        "abs_delta_loglik": ("lower", SHOWN), "impl_score": ("higher", SHOWN), "ref_score": ("higher", SHOWN),
        "text_agrees": ("higher", SHOWN), "impl_loglik": (None, SHOWN), "ref_loglik": (None, SHOWN),
        "impl_is_greedy": (None, SHOWN), "ref_is_greedy": (None, SHOWN), "is_gold": (None, SHOWN),
        "doc_id": (None, SHOWN), "request_index": (None, SHOWN), "tp_degree": (None, SHOWN),
    },
    "perf_summary": {
        "ttft_*_ms": ("lower", SHOWN), "tpot_*_ms": ("lower", SHOWN), "e2e_*_ms": ("lower", SHOWN),
        "*_ratio_hf_*": ("lower", SHOWN), "output_tok_s": ("higher", SHOWN), "total_tok_s": ("higher", SHOWN),
        "decode_tok_s": ("higher", SHOWN), "decode_gbs": ("higher", SHOWN), "prefill_gflops": ("higher", SHOWN),
        "decode_gbs_cpu": ("higher", SHOWN),
        "decode_frac_*": ("higher", SHOWN), "prefill_frac_*": ("higher", SHOWN),
        "padding_waste_*": ("lower", SHOWN), "peak_rss_mb": ("lower", SHOWN), "device_peak_mb": ("lower", SHOWN),
        "compile_seconds_total": ("lower", SHOWN),
        # the implementation's KV cache as allocated (one rank): all layers, and per layer kind (sliding/full)
        "kv_cache_bytes": ("lower", SHOWN), "kv_cache_*_bytes": ("lower", SHOWN), "kv_cache_*": (None, SHOWN),
        "ttft_n": (None, SHOWN), "tpot_n": (None, SHOWN), "e2e_n": (None, SHOWN), "layers": (None, SHOWN),
        "tp": (None, SHOWN),
        "compiled": (None, SHOWN), "batch_size": (None, SHOWN), "bucket": (None, SHOWN),
        "prompt_len": (None, SHOWN), "new_tokens": (None, SHOWN), "seq_len": (None, SHOWN), "rounds": (None, SHOWN),
        "kv_len_mean": (None, SHOWN), "decode_bytes_per_step": (None, SHOWN), "prefill_flops": (None, SHOWN),
        "ceiling_*": (None, SHOWN), "torch_threads": (None, SHOWN), "torch_interop_threads": (None, SHOWN),
        "cores_available": (None, SHOWN), "threads_per_rank": (None, SHOWN), "load_avg_1m_*": (None, SHOWN),
        "cpu_emulated": (None, SHOWN),   # with cpu_model, cpu_flags, cpu_capability, cpu_isa_limits, cpu_kind (text)
    },
    "perf_samples": {
        "latency_ns": ("lower", SHOWN), "layers": (None, SHOWN), "tp": (None, SHOWN), "compiled": (None, SHOWN),
        "batch_size": (None, SHOWN), "bucket": (None, SHOWN), "prompt_len": (None, SHOWN),
        "new_tokens": (None, SHOWN), "seq_len": (None, SHOWN), "round": (None, SHOWN), "step": (None, SHOWN),
    },
    "comparisons": {
        "regressed": ("lower", SHOWN), "ratio": (None, SHOWN), "ci_low": (None, SHOWN), "ci_high": (None, SHOWN),
        "p_value": (None, SHOWN), "p_adjusted": (None, SHOWN), "baseline_value": (None, SHOWN),
        "candidate_value": (None, SHOWN), "baseline_dirty": (None, SHOWN), "candidate_dirty": (None, SHOWN),
    },
    "bug_matrix": {
        # value's direction depends on the task's metric (accuracy up, perplexity down): far_worse is the verdict
        "far_worse": ("lower", GATED), "value": (None, SHOWN), "clean_value": (None, SHOWN),
        "change": (None, SHOWN), "is_accuracy": (None, SHOWN), "seconds": ("lower", SHOWN), "limit": (None, SHOWN),
    },
    "bisect_steps": {
        # one row per probed commit of a bisect: the A/B numbers of the candidate against the good commit
        "ratio": ("lower", SHOWN), "ci_low": ("lower", SHOWN), "ci_high": ("lower", SHOWN),
        "baseline_median": ("lower", SHOWN), "candidate_median": ("lower", SHOWN), "seconds": ("lower", SHOWN),
        "p_adjusted": (None, SHOWN), "step": (None, SHOWN), "exit_code": (None, SHOWN),
        "commits_in_range": (None, SHOWN),
    },
    "gate_power": {
        # one row per calibration comparison: the real gate on a tree with a known synthetic slowdown
        "detected": ("higher", SHOWN), "other_flagged": ("lower", SHOWN), "level": (None, SHOWN),
        "index": (None, SHOWN), "decode_ratio": (None, SHOWN), "prefill_ratio": (None, SHOWN),
        "decode_cpu_ratio": (None, SHOWN), "prefill_cpu_ratio": (None, SHOWN), "decode_p_adjusted": (None, SHOWN),
        "prefill_p_adjusted": (None, SHOWN), "gate_seconds": ("lower", SHOWN),
        "rounds": (None, SHOWN), "decode_iterations": (None, SHOWN), "prefill_iterations": (None, SHOWN),
        "load1": (None, SHOWN), "aa_false_alarms": ("lower", SHOWN), "aa_resamples": (None, SHOWN),
        "aa_rate": ("lower", SHOWN), "aa_ci_low": (None, SHOWN), "aa_ci_high": (None, SHOWN),
        "aa_sources": (None, SHOWN),
        # the user's path (gate-power --path compare): the load before the comparison, the step the work was sized by
        "load1_before": (None, SHOWN), "load5_before": (None, SHOWN), "planted_step_ms": (None, SHOWN),
    },
    "load_points": {
        # one row per level of a `granite-bench load` sweep; timings of an endpoint under load are shown and trended,
        # not gated (they were not measured side by side with a baseline)
        "ttft_ms_*": ("lower", SHOWN), "itl_ms_*": ("lower", SHOWN), "tpot_ms_*": ("lower", SHOWN),
        "e2e_ms_*": ("lower", SHOWN), "request_throughput": ("higher", SHOWN),
        "output_throughput": ("higher", SHOWN), "goodput": ("higher", SHOWN), "slo_attainment": ("higher", SHOWN),
        "requests_failed": ("lower", SHOWN), "requests_ok": (None, SHOWN), "requests": (None, SHOWN),
        "output_tokens": (None, SHOWN), "duration_s": (None, SHOWN), "concurrency": (None, SHOWN),
        "rate": (None, SHOWN), "input_len": (None, SHOWN), "output_len": (None, SHOWN), "burstiness": (None, SHOWN),
        "saturated": (None, SHOWN),
    },
    "runs": {},
}


def declared_direction(table: str, column: str) -> tuple[str | None, bool] | None:
    """(direction, gated) declared for a table's column: its exact name, else the first pattern (in declaration
    order) that matches; None if undeclared."""
    declared = METRIC_DIRECTIONS.get(table, {})
    if column in declared:
        return declared[column]
    for pattern, value in declared.items():
        if fnmatch.fnmatchcase(column, pattern):
            return value
    return None


def gated_direction(table: str, column: str) -> str | None:
    """'lower' / 'higher' when the column is a gated metric of the table, else None."""
    declared = declared_direction(table, column)
    return declared[0] if declared is not None and declared[1] else None


def undeclared_columns(table: str, dtypes: dict) -> list[str]:
    """Numeric or boolean result columns (name -> dtype kind) without a declared direction."""
    skip = set(metadata_column_names())
    return sorted(c for c, kind in dtypes.items() if kind in "biuf" and c not in skip
                  and declared_direction(table, c) is None)


def require_directions(table: str, rows):
    """`rows` (a DataFrame or a list of dicts) unchanged, or ValueError naming its numeric columns that have no
    declared direction: what the commands call before they store, so no new column is silently ungated or judged
    backwards."""
    import pandas as pd
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    undeclared = undeclared_columns(table, {c: frame[c].dtype.kind for c in frame.columns})
    if undeclared:
        raise ValueError(f"{table}: no direction declared for {', '.join(undeclared)}: add them to "
                         f"METRIC_DIRECTIONS in results/metadata.py (lower/higher better, gated or not)")
    return rows


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


def cpu_model() -> str:
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


# The CPU features a memory-bound decode's kernels depend on (x86 names as /proc/cpuinfo spells them): AVX2-only
# machines have no AVX-512 and no bf16 dot-product units, so their fp32 and bf16 kernels differ from AVX-512 ones.
CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
# Environment variables that make PyTorch's own kernels (ATen dispatch), oneDNN's and MKL's (fp32 BLAS) use a lower
# instruction set than the CPU has: how an AVX2 machine is emulated on an AVX-512 one.
ISA_LIMIT_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """Which of CPU_FLAGS_OF_INTEREST the CPU has (from /proc/cpuinfo's first `flags` line; [] where unreadable)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return []
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return [flag for flag in CPU_FLAGS_OF_INTEREST if flag in present]
    return []


def isa_limits(environ=None) -> dict[str, str]:
    """The ISA_LIMIT_VARIABLES set (non-empty) in the environment: {name: value}."""
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in ISA_LIMIT_VARIABLES if environ.get(name, "").strip()}


def machine_description(environ=None) -> tuple[str, str]:
    """(short fingerprint, human-readable description) of this machine. A run whose kernels are limited to a lower
    instruction set (ISA_LIMIT_VARIABLES set: an emulated smaller CPU) is a different machine: its fingerprint and
    description include the limits, so its results never mix with the unlimited machine's."""
    cpu = cpu_model()
    cores = os.cpu_count() or 0
    memory = _memory_gib()
    arch = platform.machine()
    system = platform.system()
    limits = isa_limits(environ)
    limit_text = " ".join(f"{name}={value}" for name, value in limits.items())
    key = "|".join([cpu, str(cores), str(memory), arch, system] + ([limit_text] if limits else []))
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:12]
    readable = f"{arch} {cpu} {cores} cores {memory} GiB {system}" + (f" [ISA limited: {limit_text}]" if limits else "")
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
