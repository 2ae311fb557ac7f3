import dataclasses
import json
import math

import pytest

from granite_bench.perf.grid import GridSpec, PerfPoint
from granite_bench.perf.roofline import Ceilings, ModelShape
from granite_bench.perf.sweep import (IMPL, PointContext, SweepSession, interleaved_rounds, kv_lengths,
                                      make_prompts, padding_waste, sample_rows, summary_rows)
from granite_bench.perf.timing import GenerationTiming
from granite_bench.reference.weights import load_hf_config

POINT = PerfPoint("tiny-gqa", None, "float32", "cpu", 1, False, 1, 32, 16, 4, 256)
CEILINGS = Ceilings("cpu", "float32", 20.0, 21.0, 10.0, 11.0, 100.0, 110.0, 0.1)


def fake_timing(ttft_ms, step_ms, steps=3):
    ns = int(step_ms * 1e6)
    return GenerationTiming(int(ttft_ms * 1e6), [ns] * steps, int(ttft_ms * 1e6) + ns * steps)


def test_rounds_rotate_the_order_and_drop_warmup():
    log = []

    def contestant(name):
        def run():
            log.append(name)
            return fake_timing(len(log), 1.0)
        return run

    timed = interleaved_rounds({n: contestant(n) for n in "abc"}, rounds=2, warmup=1)
    assert log == list("abc" + "bca" + "cab")
    assert {n: len(t) for n, t in timed.items()} == {"a": 2, "b": 2, "c": 2}
    # the warm-up round (calls 1-3) is not kept
    assert min(t.ttft_ns for ts in timed.values() for t in ts) == int(4 * 1e6)


def test_implementation_reads_its_kv_bucket_hf_reads_what_it_holds():
    point = PerfPoint("m", None, "float32", "cpu", 1, False, 1, 128, 120, 16, 256)
    lens = kv_lengths(IMPL, point, [128, 256])
    assert len(lens) == 15                     # 16 new tokens: 15 decode steps at positions 120..134
    assert lens == [128] * 8 + [256] * 7        # position p needs p + 1 slots
    assert kv_lengths("hf_eager", point, [128, 256]) == list(range(121, 136))
    assert kv_lengths("hf_static", point, [128, 256]) == [136] * 15


def test_padding_waste_counts_bucket_padding_and_masked_kv_slots():
    lens = kv_lengths(IMPL, POINT, [64, 256])
    waste = padding_waste(IMPL, POINT, lens)
    assert waste["padding_waste_prefill"] == pytest.approx(0.5)           # 16 real of 32 positions
    assert waste["padding_waste_decode"] == pytest.approx(1 - (17 + 18 + 19) / (3 * 64))
    assert padding_waste("hf_eager", POINT, kv_lengths("hf_eager", POINT, []))["padding_waste_prefill"] == 0


def test_sample_rows_hold_every_latency():
    timed = {IMPL: [fake_timing(5, 1), fake_timing(5, 1)], "hf_eager": [fake_timing(9, 2)]}
    rows = sample_rows(POINT, timed)
    assert len(rows) == 3 * (1 + 3 + 1)
    assert {r["phase"] for r in rows} == {"ttft", "tpot", "e2e"}
    assert all(r["point_key"] == POINT.key for r in rows)


def context(hf_config, compile_seconds=None):
    return PointContext(hf_config, [64, 256], CEILINGS, 4, compile_seconds or {}, 2**30, None,
                        {"torch_threads": 2})


def test_summary_ratios_bandwidth_and_throughput(tiny_model_dir):
    config = load_hf_config(tiny_model_dir)
    timed = {IMPL: [fake_timing(4, 1.0)] * 3, "hf_eager": [fake_timing(8, 4.0)] * 3}
    rows = {r["impl"]: r for r in summary_rows(POINT, timed, context(config, {"token_generation[64]": 2.5}))}
    ours = rows[IMPL]
    assert ours["tpot_ratio_hf_eager"] == pytest.approx(0.25)
    assert ours["ttft_ratio_hf_eager"] == pytest.approx(0.5)
    assert ours["tpot_n"] == 9 and ours["ttft_n"] == 3
    step_bytes = ModelShape.of(config, 1).decode_bytes(1, 64, 4)
    assert ours["decode_gbs"] == pytest.approx(step_bytes / 1e-3 / 1e9)
    assert ours["decode_frac_matvec"] == pytest.approx(ours["decode_gbs"] / 11.0)   # of the best ceiling call
    assert ours["output_tok_s"] == pytest.approx(4 / 7e-3)               # 4 tokens in 4 + 3 * 1 ms
    assert json.loads(ours["compile_seconds_json"]) == {"token_generation[64]": 2.5}
    assert "tpot_ratio_hf_eager" not in rows["hf_eager"]
    assert rows["hf_eager"]["peak_rss_mb"] == 1024


def test_prompts_are_fixed_by_the_seed_and_fit_the_vocabulary():
    a, b = make_prompts(POINT, 100), make_prompts(POINT, 100)
    assert a == b and len(a) == 1 and len(a[0]) == 16 and all(3 <= t < 100 for t in a[0])


def test_grid_point_columns_name_compile_as_compiled():
    columns = GridSpec().points()[0].columns()
    assert "compiled" in columns and "compile" not in columns and columns["point_key"]


def test_compile_times_are_those_of_the_graphs_the_point_ran():
    from types import SimpleNamespace

    from granite_bench.perf.sweep import compile_times
    graphs = SimpleNamespace(compile_seconds={("context_encoding", 32): 1.5, ("context_encoding", 128): 4.0,
                                              ("token_generation", 64): 2.0, ("token_generation", 256): 9.0})
    runner = SimpleNamespace(graphs=graphs, neuron_config=SimpleNamespace(token_generation_buckets=[64, 256]))
    assert compile_times(runner, POINT) == {"context_encoding[32]": 1.5, "token_generation[64]": 2.0}
    assert compile_times(SimpleNamespace(neuron_config=runner.neuron_config), POINT) == {}


def test_a_fraction_above_a_ceiling_is_kept_and_flagged_suspect():
    from granite_bench.perf.sweep import roofline_fractions
    low = Ceilings("cpu", "float32", 20.0, 21.0, 1.0, 2.0, 100.0, 110.0, 0.1)      # matvec measured too low
    flagged = roofline_fractions(decode_gbs=3.0, prefill_gflops=55.0, ceilings=low)
    assert flagged["decode_frac_matvec"] == pytest.approx(1.5)                    # kept as measured, not clipped
    assert flagged["ceiling_suspect"] and flagged["ceiling_suspect_of"] == "decode_frac_matvec"
    fine = roofline_fractions(decode_gbs=1.5, prefill_gflops=55.0, ceilings=low)
    assert not fine["ceiling_suspect"] and fine["ceiling_suspect_of"] == ""


def test_a_ceiling_measured_as_zero_gives_no_fraction_and_is_flagged():
    from granite_bench.perf.sweep import roofline_fractions
    zero = Ceilings("cpu", "bfloat16", 20.0, 21.0, 10.0, 11.0, 0.0, 0.0, 0.1)
    row = roofline_fractions(decode_gbs=1.0, prefill_gflops=5.0, ceilings=zero)
    assert math.isnan(row["prefill_frac_matmul"]) and row["ceiling_suspect_of"] == "prefill_frac_matmul"


def test_ceilings_are_measured_once_per_dtype_and_thread_count_of_the_points():
    asked = []

    def ceilings_fn(dtype, device, threads=None):
        asked.append((dtype, device, threads))
        return CEILINGS
    session = SweepSession(GridSpec(), {"torch_threads": 2}, ceilings_fn=ceilings_fn)
    session.ceilings_for(POINT)
    session.ceilings_for(POINT)
    assert asked == [(POINT.dtype, POINT.device, 2)]


def test_cpu_time_medians_bandwidth_and_ratios_sit_beside_the_wall_time_ones(tiny_model_dir):
    config = load_hf_config(tiny_model_dir)
    ours_t = dataclasses.replace(fake_timing(4, 1.0), ttft_cpu_ns=2_000_000, step_cpu_ns=[500_000] * 3)
    hf_t = dataclasses.replace(fake_timing(8, 4.0), ttft_cpu_ns=4_000_000, step_cpu_ns=[1_000_000] * 3)
    ctx = dataclasses.replace(context(config), ceilings=dataclasses.replace(CEILINGS, matvec_gbs_cpu_best=12.0))
    rows = {r["impl"]: r for r in summary_rows(POINT, {IMPL: [ours_t] * 3, "hf_eager": [hf_t] * 3}, ctx)}
    ours = rows[IMPL]
    assert ours["tpot_cpu_p50_ms"] == pytest.approx(0.5) and ours["ttft_cpu_p50_ms"] == pytest.approx(2.0)
    assert ours["tpot_cpu_ratio_hf_eager"] == pytest.approx(0.5) and ours["ttft_cpu_ratio_hf_eager"] == 0.5
    assert ours["decode_gbs_cpu"] == pytest.approx(2 * ours["decode_gbs"])   # half the time: twice the rate
    assert ours["decode_frac_matvec_cpu"] == pytest.approx(ours["decode_gbs_cpu"] / 12.0)   # of the CPU-time ceiling
    no_cpu_ceiling = summary_rows(POINT, {IMPL: [ours_t] * 3}, context(config))[0]
    assert "decode_frac_matvec_cpu" not in no_cpu_ceiling and not no_cpu_ceiling["ceiling_suspect"]


def test_timings_without_cpu_time_give_no_cpu_columns(tiny_model_dir):
    config = load_hf_config(tiny_model_dir)
    rows = summary_rows(POINT, {IMPL: [fake_timing(4, 1.0)] * 3, "hf_eager": [fake_timing(8, 4.0)] * 3},
                        context(config))
    assert not any("cpu_p50" in column or "_cpu_ratio" in column for row in rows for column in row)
    assert "decode_frac_matvec_cpu" not in rows[0]
