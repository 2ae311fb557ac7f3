import dataclasses
import json
import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from granite_bench.results.metadata import (
    SCHEMA_VERSION,
    collect_run_metadata,
    config_hash,
    metadata_column_names,
    new_run_id,
)

RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")


def collect(repo_dir, config=None):
    return collect_run_metadata(
        suite="parity", device="cpu", dtype="float32", config=config or {"a": 1}, seed=7, repo_dir=repo_dir
    )


def test_run_ids_sort_by_time_and_are_unique():
    start = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    times = [start + timedelta(seconds=s) for s in (0, 1, 59, 3600, 86400 * 40)]
    ids = [new_run_id(t) for t in times]
    assert all(RUN_ID.match(i) for i in ids)
    assert ids == sorted(ids)
    assert ids[0].startswith("20250102T030405Z-")
    same_second = {new_run_id(start) for _ in range(1000)}
    assert len(same_second) == 1000


def test_config_hash_ignores_key_order_and_follows_content():
    a = {"model": "tiny", "grid": {"batch": [1, 2], "tp": 1}}
    b = {"grid": {"tp": 1, "batch": [1, 2]}, "model": "tiny"}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "model": "small"})
    assert config_hash(a) != config_hash({"model": "tiny", "grid": {"batch": [2, 1], "tp": 1}})
    assert len(config_hash(a)) == 16


def test_collected_metadata_fields(tmp_path):
    config = {"z": 1, "a": [1, 2]}
    meta = collect(tmp_path, config)
    assert RUN_ID.match(meta.run_id)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", meta.utc_time)
    assert meta.run_id[:8] == meta.utc_time[:10].replace("-", "")
    assert json.loads(meta.config_json) == config
    assert meta.config_hash == config_hash(config)
    versions = json.loads(meta.package_versions)
    assert set(versions) >= {"python", "granite-bench", "torch", "transformers", "lm-eval",
                             "numpy", "pandas", "pyarrow", "duckdb"}
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    assert versions["pandas"] is not None
    assert meta.machine_fingerprint == collect(tmp_path).machine_fingerprint
    assert "cores" in meta.machine and "GiB" in meta.machine


def test_columns_carry_every_field_and_the_table_schema_version(tmp_path):
    meta = collect(tmp_path)
    for table, version in SCHEMA_VERSION.items():
        columns = meta.columns(table)
        assert list(columns) == metadata_column_names()
        assert columns["schema_version"] == version
        assert columns["run_id"] == meta.run_id
    with pytest.raises(ValueError, match="no_such_table"):
        meta.columns("no_such_table")


def test_metadata_is_immutable(tmp_path):
    meta = collect(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.seed = 3  # type: ignore[misc]


def test_git_fields_outside_a_repository(tmp_path):
    meta = collect(tmp_path)
    assert meta.git_sha == "unknown"
    assert meta.git_dirty is False


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_fields_follow_commit_and_dirty_state(tmp_path):
    def git(*args):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false",
             "-C", str(tmp_path), *args],
            check=True, capture_output=True,
        )

    git("init", "-q")
    assert collect(tmp_path).git_sha == "unknown"  # no commits yet

    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("commit", "-q", "-m", "first")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"],
                          check=True, capture_output=True, text=True).stdout.strip()
    clean = collect(tmp_path)
    assert clean.git_sha == head
    assert clean.git_dirty is False

    (tmp_path / "a.txt").write_text("two\n")
    dirty = collect(tmp_path)
    assert dirty.git_sha == head
    assert dirty.git_dirty is True


def test_results_package_does_not_import_torch():
    code = (
        "import granite_bench.results, granite_bench.results.store, granite_bench.results.metadata, sys; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_cpu_flags_are_the_ones_that_decide_the_kernels_read_from_cpuinfo():
    from granite_bench.results.metadata import cpu_flags
    cpuinfo = "processor\t: 0\nflags\t\t: fpu sse avx2 fma avx512f avx512bw avx512_bf16 amx_tile\nbogomips: 1\n"
    assert cpu_flags(cpuinfo) == ["avx2", "avx512f", "avx512_bf16"]
    assert cpu_flags("processor: 0\n") == []


def test_an_isa_limited_run_is_a_different_machine_named_so():
    from granite_bench.results.metadata import machine_description
    native_fp, native_text = machine_description({})
    limited_fp, limited_text = machine_description({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert limited_fp != native_fp
    assert limited_text == native_text + " [ISA limited: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2]"
    assert machine_description({"ATEN_CPU_CAPABILITY": ""}) == (native_fp, native_text)   # empty: not a limit
