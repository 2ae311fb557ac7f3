import math

import pytest
from transformers import GraniteForCausalLM

from granite_bench.perf import roofline
from granite_bench.perf.roofline import ModelShape, measure_ceilings
from granite_bench.reference.weights import load_hf_config


def test_weights_read_per_step_are_every_parameter_of_the_tied_model(tiny_model_dir):
    config = load_hf_config(tiny_model_dir)
    hf = GraniteForCausalLM.from_pretrained(tiny_model_dir)
    params = sum(p.numel() for p in hf.parameters())  # tied: the embedding counted once, as the LM head
    # batch 0: no embedding rows looked up, so only the LM head reads the (tied) vocabulary matrix
    assert ModelShape.of(config, 1).weight_elements_per_step(batch=0) == params
    assert ModelShape.hf(config).weight_elements_per_step(batch=0) == params


def test_replicated_kv_heads_are_counted_once_per_rank(tiny_model_dir):
    config = load_hf_config(tiny_model_dir)   # 8 query heads over 2 KV heads
    assert ModelShape.of(config, 2).kv_heads == 2
    assert ModelShape.of(config, 8).kv_heads == 8


SMALL = ModelShape(hidden=4, intermediate=8, layers=1, vocab_padded=10, q_heads=2, kv_heads=1, head_dim=2,
                   attention_bias=False, mlp_bias=False)


def test_decode_bytes_count_weights_embedding_rows_and_the_kv_read():
    # layer: qkv 4*(2+2*1)*2 + o 2*2*4 + mlp 3*4*8 = 144, two norms 8; final norm 4; head 10*4; one embedding row 4
    weights = 144 + 8 + 4 + 40 + 4
    kv = 2 * 1 * 1 * 5 * 2          # k and v, batch 1, 1 KV head, 5 positions, head_dim 2
    assert SMALL.decode_bytes(batch=1, kv_len=5, itemsize=4) == (weights + kv) * 4


def test_prefill_flops_count_projections_square_attention_and_last_logits():
    linear = 2 * 3 * 144
    attention = 2 * 2 * 1 * 2 * 3 * 3 * 2      # QK^T and PV over the full 3x3 square, 2 query heads
    head = 2 * 1 * 4 * 10
    assert SMALL.prefill_flops(batch=1, length=3) == linear + attention + head
    assert SMALL.prefill_flops(batch=1, length=3, all_logits=True) == linear + attention + 3 * head


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ceilings_are_measured_as_positive_rates(dtype):
    c = measure_ceilings(dtype, read_mib=8, matvec_mib=4, matmul_n=64, reps=2)
    for value in (c.read_gbs, c.read_gbs_best, c.matvec_gbs, c.matmul_gflops):
        assert value > 0 and math.isfinite(value)
    assert set(c.columns()) >= {"ceiling_read_gbs", "ceiling_matvec_gbs", "ceiling_matmul_gflops"}


def test_median_and_best_time_the_calls_after_a_warm_up_and_pick_the_middle_and_the_fastest(monkeypatch):
    """Scripted call durations (ns) 9 (the warm-up, left out), 4, 2, 6: median 4, best 2, as seconds."""
    durations = iter([4, 2, 6])
    clock = {"now": 0}
    calls = []

    def fake_call():
        calls.append(clock["now"])
        if len(calls) > 1:                     # the warm-up call takes no clock time we could see
            clock["now"] += next(durations)

    monkeypatch.setattr(roofline.time, "perf_counter_ns", lambda: clock["now"])
    median, best = roofline._median_and_best(fake_call, reps=3, sync=lambda: None)
    assert len(calls) == 4
    assert (median, best) == (4e-9, 2e-9)
