import math

import pytest
import torch
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


def test_prefill_flops_count_a_sliding_layers_attention_over_each_querys_window_only():
    from dataclasses import replace
    shape = replace(SMALL, layers=2, sliding_layers=1, window=2)   # one full layer, one sliding layer of window 2
    # 5 queries: the full layer scores the 5x5 square (25); the sliding one 1 + 2 + 2 + 2 + 2 = 9 keys
    linear = 2 * 5 * 2 * 144
    attention = 2 * 2 * 1 * 2 * (25 + 9) * 2      # QK^T and PV, batch 1, 2 query heads, head_dim 2
    head = 2 * 1 * 4 * 10
    assert shape.prefill_flops(batch=1, length=5) == linear + attention + head == 3504
    # a window longer than the prompt: the sliding layer's causal triangle 1 + 2 + 3, the full layer's 3x3 square
    wide = replace(shape, window=16)
    assert wide.prefill_flops(batch=1, length=3) == 2 * 3 * 2 * 144 + 2 * 2 * 1 * 2 * (9 + 6) * 2 + head


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ceilings_are_measured_as_positive_rates(dtype):
    c = measure_ceilings(dtype, read_mib=8, matvec_mib=4, matmul_n=64, reps=2, min_seconds=0.05)
    for value in (c.read_gbs, c.read_gbs_best, c.matvec_gbs, c.matmul_gflops, c.read_gbs_cpu_best,
                  c.matvec_gbs_cpu_best):
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


def test_median_and_best_keep_calling_until_the_minimum_time_has_passed(monkeypatch):
    """Scripted 0.1 s calls: 2 reps asked, but 0.5 s of calls wanted, so 5 timed calls (after the warm-up)."""
    clock = {"now": 0}
    calls = []

    def fake_call():
        calls.append(clock["now"])
        clock["now"] += 100_000_000

    monkeypatch.setattr(roofline.time, "perf_counter_ns", lambda: clock["now"])
    median, best = roofline._median_and_best(fake_call, reps=2, sync=lambda: None, min_seconds=0.5)
    assert len(calls) == 1 + 5 and (median, best) == (0.1, 0.1)


def test_one_slow_call_under_load_does_not_lower_the_ceiling_the_fractions_use(monkeypatch):
    """Scripted matrix-vector calls: a busy machine makes most calls 4x slower; the best call is the ceiling."""
    durations = iter([40, 40, 10, 40, 40])
    clock = {"now": 0}
    warm = {"done": False}

    def fake_call():
        if warm["done"]:
            clock["now"] += next(durations)
        warm["done"] = True

    monkeypatch.setattr(roofline.time, "perf_counter_ns", lambda: clock["now"])
    median, best = roofline._median_and_best(fake_call, reps=5, sync=lambda: None)
    assert median == 40e-9 and best == 10e-9
    nbytes = 1e3
    ceiling = roofline.Ceilings("cpu", "float32", 1, 1, nbytes / median / 1e9, nbytes / best / 1e9, 1, 1, 0)
    point_gbs = 2.5 * ceiling.matvec_gbs                             # a point reading at 2.5x the median-call rate
    assert roofline.fraction_of(point_gbs, ceiling.matvec_gbs) > 1 # against the median: an impossible 250%
    assert roofline.fraction_of(point_gbs, ceiling.matvec_gbs_best) <= 1


def test_ceilings_are_measured_with_the_thread_count_asked_and_threads_are_restored():
    before = torch.get_num_threads()
    c = measure_ceilings("float32", read_mib=4, matvec_mib=2, matmul_n=32, reps=1, min_seconds=0, threads=2)
    assert c.threads == 2 and torch.get_num_threads() == before


def test_suspect_fractions_are_those_above_one_or_without_a_ceiling():
    fractions = {"decode_frac_matvec": 1.46, "decode_frac_read": 0.5, "prefill_frac_matmul": float("nan"),
                 "exactly": 1.0}
    assert roofline.suspect_fractions(fractions) == ["decode_frac_matvec", "prefill_frac_matmul"]
    assert math.isnan(roofline.fraction_of(5.0, 0.0))


def test_the_last_level_cache_is_the_largest_cache_the_os_reports(tmp_path):
    for index, size in (("index0", "48K"), ("index2", "2048K"), ("index3", "491520K")):
        (tmp_path / index).mkdir()
        (tmp_path / index / "size").write_text(size + "\n")
    assert roofline.last_level_cache_bytes(str(tmp_path)) == 480 * 2**20
    assert roofline.last_level_cache_bytes(str(tmp_path / "missing")) == 0


def test_ceiling_buffers_stream_from_memory_past_a_large_cache_within_a_memory_cap():
    mib = 2**20
    assert roofline.streaming_buffer_mib(256, 32 * mib) == 256           # a usual L3: the floor is already 8x it
    assert roofline.streaming_buffer_mib(256, 480 * mib) == 960          # a 480 MiB L3: twice it
    assert roofline.streaming_buffer_mib(256, 4096 * mib) == roofline.MAX_BUFFER_MIB
    assert roofline.streaming_buffer_mib(256, 0) == 256                  # unknown cache: the floor


def test_the_cpu_time_ceiling_is_the_fewest_cpu_seconds_of_the_calls(monkeypatch):
    """Scripted CPU clock: calls of 5, 3, 7 ns after an unseen warm-up: the best is 3 ns."""
    durations = iter([5, 3, 7])
    clock = {"now": 0, "warm": False}

    def fake_call():
        if clock["warm"]:
            clock["now"] += next(durations)
        clock["warm"] = True

    monkeypatch.setattr(roofline.time, "process_time_ns", lambda: clock["now"])
    assert roofline.best_cpu_seconds(fake_call, reps=3, sync=lambda: None) == 3e-9


@pytest.mark.parametrize("name", ["tiny-hybrid", "tiny-hybrid-dense"])
def test_a_hybrids_weights_read_per_step_are_its_parameters_and_its_kv_and_states_per_layer_kind(name):
    """Batch 0 reads every weight but the experts (top_k of them) and the embedding rows; KV only for attention
    layers; each Mamba layer reads and writes its fp32 SSM state and its conv state."""
    from transformers import GraniteMoeHybridForCausalLM

    from granite_bench.reference.weights import resolve_model_dir
    config = load_hf_config(resolve_model_dir(name))
    with torch.device("meta"):
        hf = GraniteMoeHybridForCausalLM(config)
    params = sum(p.numel() for n, p in hf.named_parameters() if "experts" not in n)
    if not config.tie_word_embeddings:
        params -= config.vocab_size * config.hidden_size          # batch 0: no embedding row read
    experts = config.num_local_experts
    expert = 3 * config.hidden_size * config.intermediate_size
    shape = ModelShape.of(config, 1)
    assert shape.weight_elements_per_step(batch=0) == params + config.num_hidden_layers * (
        config.num_experts_per_tok * expert if experts else 0)
    attention_layers = config.layer_types.count("full_attention")
    assert shape.kv_elements_read(1, 10) == attention_layers * 2 * config.num_key_value_heads * 10 * (
        config.hidden_size // config.num_attention_heads)
    mamba = config.num_hidden_layers - attention_layers
    ssm = config.mamba_n_heads * config.mamba_d_head * config.mamba_d_state
    conv = (2 * config.hidden_size + 2 * config.mamba_n_groups * config.mamba_d_state) * (config.mamba_d_conv - 1)
    assert shape.state_bytes_per_step(1, 2) == mamba * 2 * (ssm * 4 + conv * 2)


def test_a_sliding_layer_reads_at_most_its_window_of_kv_whatever_the_context():
    from transformers import GraniteSWAConfig

    config = GraniteSWAConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4,
                              sliding_window=16, vocab_size=100, bos_token_id=1, eos_token_id=2)   # 1 full, 3 sliding
    shape = ModelShape.of(config)
    assert (shape.sliding_layers, shape.window) == (3, 16)
    per_position = 2 * 2 * 16          # k and v, 2 KV heads, head_dim 16, batch 1
    assert shape.kv_elements_read(1, 10) == 4 * 10 * per_position
    assert shape.kv_elements_read(1, 4096) == (4096 + 3 * 16) * per_position
    assert shape.kv_elements_read(1, 32768) - shape.kv_elements_read(1, 4096) == (32768 - 4096) * per_position
