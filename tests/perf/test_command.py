"""`granite-bench perf` end to end on the tiny preset, with the ceilings stubbed out (they are tested on their own)."""

import io

import pytest
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from granite_bench.fingerprint import package_code_fingerprint
from granite_bench.perf import sweep
from granite_bench.perf.command import PerfArgs, run_perf_command
from granite_bench.perf.grid import GridSpec
from granite_bench.perf.roofline import Ceilings
from granite_bench.results import ResultStore


@pytest.fixture(autouse=True)
def quick_ceilings(monkeypatch):
    monkeypatch.setattr(sweep, "measure_ceilings",
                        lambda dtype, device, threads=None: Ceilings(device, dtype, 20.0, 21.0, 9.0, 10.0, 50.0,
                                                                    60.0, 0.0))


def small_spec(tiny_model_dir, **kw):
    values = dict(model=str(tiny_model_dir), buckets=[8, 16], new_tokens=3, rounds=1, warmup=0,
                  baselines=["hf_eager"], threads=1)
    return GridSpec(**{**values, **kw})


def run(args):
    out = io.StringIO()
    console = Console(file=out, width=200)
    rows = run_perf_command(args, console, lambda: Progress(console=console))
    return rows, out.getvalue()


def test_sweep_stores_each_point_and_a_rerun_skips_them(tmp_path, tiny_model_dir, monkeypatch):
    spec = small_spec(tiny_model_dir)
    rows, text = run(PerfArgs(spec, results_dir=tmp_path))
    store = ResultStore(tmp_path)
    summary = store.read("perf_summary")
    assert sorted(summary["impl"]) == ["granite", "granite", "hf_eager", "hf_eager"]
    assert summary["run_id"].nunique() == 2                        # one run per point
    assert set(summary["point_key"]) == {p.key for p in spec.points()}
    samples = store.read("perf_samples")
    assert len(samples) == 2 * 2 * (1 + 2 + 1)                     # points x impls x (ttft, 2 steps, e2e)
    assert "tp1 b1 ctx8" in text and "TPOT/HFe" in text

    monkeypatch.setattr(sweep.SweepSession, "measure", lambda self, point: pytest.fail("re-measured " + point.label))
    again, text = run(PerfArgs(spec, results_dir=tmp_path))
    assert "2 already stored · 0 to run" in text
    assert len(again) == len(rows)


def test_interrupted_sweep_keeps_finished_points_and_resumes(tmp_path, tiny_model_dir, monkeypatch):
    spec = small_spec(tiny_model_dir, baselines=[])
    real = sweep.SweepSession.measure
    calls = []

    def measure_then_interrupt(self, point):
        calls.append(point.key)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, point)

    monkeypatch.setattr(sweep.SweepSession, "measure", measure_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(PerfArgs(spec, results_dir=tmp_path))
    assert list(ResultStore(tmp_path).read("perf_summary")["point_key"]) == [calls[0]]
    monkeypatch.setattr(sweep.SweepSession, "measure", real)
    _, text = run(PerfArgs(spec, results_dir=tmp_path))
    assert "1 already stored · 1 to run" in text
    assert set(ResultStore(tmp_path).read("perf_summary")["point_key"]) == {p.key for p in spec.points()}


def test_shards_write_their_own_files_that_union_to_the_grid(tmp_path, tiny_model_dir):
    spec = small_spec(tiny_model_dir, baselines=[], batch_sizes=[1, 2])
    for shard in ("1/3", "2/3", "3/3"):
        run(PerfArgs(spec, shard=shard, results_dir=tmp_path / shard.replace("/", "of")))
    keys = []
    for folder in tmp_path.iterdir():
        keys += list(ResultStore(folder).read("perf_summary")["point_key"])
    assert sorted(keys) == sorted(p.key for p in spec.points())


def test_tensor_parallel_points_run_through_the_tp_runner(tmp_path, tiny_model_dir):
    spec = small_spec(tiny_model_dir, baselines=[], tp=[2], buckets=[8])
    rows, _ = run(PerfArgs(spec, results_dir=None))
    assert [(r["tp"], r["impl"]) for r in rows] == [(2, "granite")]
    assert rows[0]["tpot_n"] == 2
    # rank 0's cache: 1 of the 2 KV heads (dim 16), K and V in fp32, 4 layers of seq_len slots
    per_slot = 2 * 1 * 16 * 4
    assert rows[0]["kv_cache_full_attention_bytes_per_slot"] == per_slot
    assert rows[0]["kv_cache_bytes"] == 4 * rows[0]["seq_len"] * per_slot


def test_cli_refuses_a_bad_shard_in_one_line():
    from granite_bench.cli import app
    result = CliRunner().invoke(app, ["perf", "--shard", "5/2", "--no-save"])
    assert result.exit_code == 2
    assert "--shard 5/2" in result.output and "Traceback" not in result.output


def test_cli_refuses_a_tp_degree_the_model_cannot_take(tiny_model_dir):
    from granite_bench.cli import app
    result = CliRunner().invoke(app, ["perf", "--model", str(tiny_model_dir), "--tp", "3", "--no-save",
                                      "--baselines", "none", "--buckets", "8", "--new-tokens", "2"])
    assert result.exit_code == 2, result.output
    assert "--tp 3" in result.output


def test_a_point_whose_summary_fails_to_write_is_not_stored_at_all(tmp_path, tiny_model_dir, monkeypatch):
    """Each point's samples and summary are one run: a failure between them leaves neither for any reader."""
    from granite_bench.results import store as store_module
    real = store_module.write_rows_atomic

    def fail_on_summary(path, frame, footer=None):
        if "perf_summary" in str(path):
            raise OSError(28, "No space left on device")
        return real(path, frame, footer)

    monkeypatch.setattr(store_module, "write_rows_atomic", fail_on_summary)
    with pytest.raises(OSError):
        run(PerfArgs(small_spec(tiny_model_dir), results_dir=tmp_path))
    store = ResultStore(tmp_path)
    assert store.read("perf_samples").empty and store.read("perf_summary").empty and store.uncommitted() == []


def test_a_ceiling_measured_too_low_is_flagged_in_the_store_and_warned_in_the_table(tmp_path, tiny_model_dir,
                                                                                      monkeypatch):
    """A matrix-vector ceiling of 1e-6 GB/s (a machine busy while it was measured): every decode fraction is far
    above 100%; it is stored as measured, flagged, marked '!' and warned about, never printed silently."""
    monkeypatch.setattr(sweep, "measure_ceilings", lambda dtype, device, threads=None:
                        Ceilings(device, dtype, 20.0, 21.0, 1e-6, 1e-6, 50.0, 60.0, 0.0, threads or 1))
    rows, text = run(PerfArgs(small_spec(tiny_model_dir, buckets=[8], baselines=[]), results_dir=tmp_path))
    summary = ResultStore(tmp_path).read("perf_summary")
    assert summary["ceiling_suspect"].all() and (summary["decode_frac_matvec"] > 1).all()
    assert set(summary["ceiling_suspect_of"]) == {"decode_frac_matvec"}
    assert "warning:" in text and "ceiling was measured too low" in text
    assert any(cell.strip().endswith("%!") for cell in text.split("│"))


def test_rows_record_the_kind_of_cpu_and_the_table_names_it(tmp_path, tiny_model_dir):
    import torch
    rows, text = run(PerfArgs(small_spec(tiny_model_dir, buckets=[8], baselines=[]), results_dir=tmp_path))
    summary = ResultStore(tmp_path).read("perf_summary")
    assert set(summary["cpu_capability"]) == {torch.backends.cpu.get_cpu_capability()}
    assert {"cpu_model", "cpu_flags", "cpu_isa_limits", "cpu_emulated", "cpu_kind"} <= set(summary.columns)
    assert f"kernels {summary['cpu_kind'].iloc[0]}" in text


def test_an_emulated_cpu_is_said_to_be_emulated_in_the_table():
    from granite_bench.perf.command import cpu_kinds
    row = {"cpu_model": "Xeon", "cpu_flags": "avx2 avx512f", "cpu_emulated": True,
           "cpu_kind": "AVX2 (emulated on an AVX512 CPU: ATEN_CPU_CAPABILITY=avx2)"}
    lines = cpu_kinds([row, dict(row), {"impl": "from an older run without the columns"}])
    assert len(lines) == 1 and "kernels AVX2 (emulated" in lines[0] and "EMULATED" in lines[0]
    assert "EMULATED" not in cpu_kinds([{**row, "cpu_emulated": False, "cpu_kind": "AVX512"}])[0]


def test_busy_host_warning_fires_when_the_load_exceeds_the_cores_perf_leaves_free():
    from granite_bench.perf.command import busy_warning
    assert busy_warning(0.5, cores=2, threads=1) is None        # one core free, half of it in use
    warned = busy_warning(1.9, cores=2, threads=2)                # the default threads on a busy 2-core host
    assert "exceeds the 0 of 2 cores" in warned and "will be inflated" in warned and "rerun with --threads 1" in warned
    one_thread = busy_warning(1.5, cores=2, threads=1)
    assert "inflated" in one_thread and "rerun with --threads 1" not in one_thread
    assert busy_warning(5.9, cores=8, threads=2) is None


def test_perf_prints_the_busy_warning_with_the_load_it_read(tmp_path, tiny_model_dir, monkeypatch):
    import os
    monkeypatch.setattr(os, "getloadavg", lambda: (7.5, 1.0, 1.0))
    _, text = run(PerfArgs(small_spec(tiny_model_dir, buckets=[8], baselines=[]), results_dir=None))
    assert "warning: host load average 7.5 (1 min) exceeds" in " ".join(text.split())


def test_a_point_stored_by_other_code_is_measured_again_and_the_header_says_why(tmp_path, tiny_model_dir,
                                                                                monkeypatch):
    spec = small_spec(tiny_model_dir, baselines=[])
    run(PerfArgs(spec, results_dir=tmp_path))
    stored = ResultStore(tmp_path).read("perf_summary")
    assert set(stored["code_fingerprint"]) == {package_code_fingerprint()}
    measured = []
    real = sweep.SweepSession.measure

    def count(self, point):
        measured.append(point.key)
        return real(self, point)
    monkeypatch.setattr(sweep.SweepSession, "measure", count)
    monkeypatch.setattr("granite_bench.fingerprint.package_code_fingerprint", lambda: "edited-code")
    _, text = run(PerfArgs(spec, results_dir=tmp_path))
    assert "0 already stored · 2 stored by other code: re-running · 2 to run" in text
    assert sorted(measured) == sorted(p.key for p in spec.points())
    measured.clear()
    _, text = run(PerfArgs(spec, results_dir=tmp_path))
    assert "2 already stored · 0 to run" in text and not measured


@pytest.mark.parametrize("seq_len", [4096, 32768, 131072])
def test_perf_prints_and_stores_a_sliding_layers_kv_cache_as_w_slots_whatever_the_sequence_length(tmp_path, seq_len):
    """tiny-swa (window 16; 2 full layers, 3 sliding; 2 KV heads of dim 16): the cache as the runner allocated it."""
    spec = GridSpec(model="tiny-swa", buckets=[8], new_tokens=3, rounds=1, warmup=0, baselines=[], threads=1,
                    seq_len=seq_len)
    _, text = run(PerfArgs(spec, results_dir=tmp_path))
    row = ResultStore(tmp_path).read("perf_summary").iloc[0]
    per_slot = 2 * 2 * 16 * 4                      # K and V, 2 KV heads, head_dim 16, fp32, batch 1
    sliding = [row[f"kv_cache_sliding_attention_{k}"] for k in ("layers", "slots", "bytes_per_slot", "bytes")]
    full = [row[f"kv_cache_full_attention_{k}"] for k in ("layers", "slots", "bytes_per_slot", "bytes")]
    assert sliding == [3, 16, per_slot, 3 * 16 * per_slot]
    assert full == [2, seq_len, per_slot, 2 * seq_len * per_slot]
    assert row["kv_cache_bytes"] == (3 * 16 + 2 * seq_len) * per_slot
    assert "KV cache per layer kind" in text
    line = next(text_line for text_line in text.splitlines() if "sliding_attention" in text_line)
    assert [cell.strip() for cell in line.split("│")[5:10]] == ["sliding_attention", "3", "16", str(per_slot),
                                                               str(3 * 16 * per_slot)]


def test_the_kv_cache_table_is_printed_for_caches_with_layer_kinds_only():
    import json

    from granite_bench.perf.command import kv_cache_layouts
    from granite_bench.perf.sweep import kv_cache_columns
    dense = kv_cache_columns({"full_attention": {"layers": 2, "slots": 64, "bytes_per_slot": 8, "bytes": 1024}})
    window = kv_cache_columns({"full_attention": {"layers": 1, "slots": 64, "bytes_per_slot": 8, "bytes": 512},
                               "sliding_attention": {"layers": 2, "slots": 4, "bytes_per_slot": 8, "bytes": 64}})
    assert window["kv_cache_bytes"] == 576 and window["kv_cache_sliding_attention_slots"] == 4
    point = {"dtype": "float32", "tp": 1, "batch_size": 1, "seq_len": 64}
    assert kv_cache_layouts([{**point, **dense}]) == []
    rows = [{**point, **window, "bucket": b} for b in (8, 16)] + [{**point, "kv_cache_json": float("nan")}]
    assert [layout for _, layout in kv_cache_layouts(rows)] == [json.loads(window["kv_cache_json"])]   # once per cache
    assert kv_cache_columns({}) == {}
