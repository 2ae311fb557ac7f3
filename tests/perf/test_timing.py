import pytest
import torch

from granite_bench.perf.timing import (peak_rss_bytes, reset_peak_rss, set_threads, synchronizer,
                                       time_runner_generation)

PROMPTS = [[5, 9, 13, 17, 21, 25], [7, 8, 9, 10, 11, 12]]


@pytest.fixture(scope="module")
def runners(tiny_model_dir):
    from granite_bench.runtime.runner import build_neuron_config
    from granite_bench.runtime.select import build_runner
    all_logits = build_runner(str(tiny_model_dir), batch_size=2, seq_len=64, buckets=[8, 16])
    last_only = build_runner(str(tiny_model_dir), neuron_config=build_neuron_config(
        batch_size=2, seq_len=64, buckets=[8, 16], output_logits=False))
    yield all_logits, last_only
    all_logits.close()
    last_only.close()


def test_timed_generation_decodes_what_the_runner_generates(runners):
    all_logits, last_only = runners
    expected = all_logits.generate(PROMPTS, 6).tokens
    for runner in runners:
        timing = time_runner_generation(runner, PROMPTS, 6, synchronizer("cpu"))
        assert timing.tokens == expected
        assert len(timing.step_ns) == 5
        assert 0 < timing.ttft_ns < timing.e2e_ns
        assert len(timing.step_cpu_ns) == 5 and timing.ttft_cpu_ns > 0 and all(ns >= 0 for ns in timing.step_cpu_ns)


def test_hf_timing_stamps_every_token_and_decodes_hf_greedy(tiny_model_dir):
    from granite_bench.perf.hf_baseline import load_hf_model, time_hf_generation
    from granite_bench.reference.hf_reference import greedy_tokens, load_reference
    model = load_hf_model(tiny_model_dir)
    expected = greedy_tokens(load_reference(tiny_model_dir), PROMPTS[0], 5)
    for cache in (None, "static"):
        timing = time_hf_generation(model, PROMPTS[:1], 5, cache, synchronizer("cpu"))
        assert timing.tokens == [expected]
        assert len(timing.step_ns) == 4 and all(ns > 0 for ns in timing.step_ns)
        assert timing.ttft_ns + sum(timing.step_ns) <= timing.e2e_ns
        assert len(timing.step_cpu_ns) == 4 and timing.ttft_cpu_ns > 0 and all(ns >= 0 for ns in timing.step_cpu_ns)


def test_hf_baseline_runs_the_attention_the_registry_forces(tiny_model_dir):
    """A sliding-window Granite loads in eager attention (HF does not run it on SDPA); others in SDPA."""
    from granite_bench.perf.hf_baseline import hf_attention, load_hf_model
    from granite_bench.reference.weights import resolve_model_dir
    swa = resolve_model_dir("tiny-swa")
    assert (hf_attention(swa), hf_attention(tiny_model_dir)) == ("eager", "sdpa")
    assert load_hf_model(swa).config._attn_implementation == "eager"


def test_hf_baseline_refuses_ragged_prompts(tiny_model_dir):
    from granite_bench.perf.hf_baseline import load_hf_model, time_hf_generation
    with pytest.raises(ValueError, match="one length"):
        time_hf_generation(load_hf_model(tiny_model_dir), [[1, 2], [3]], 2, None, synchronizer("cpu"))


def test_threads_are_set_and_reported():
    before = torch.get_num_threads()
    try:
        assert set_threads(1)["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_peak_rss_sees_a_large_allocation():
    reset_peak_rss()
    base = peak_rss_bytes()
    block = torch.ones(64 * 2**20 // 4)   # 64 MiB touched
    assert peak_rss_bytes() >= base + 60 * 2**20
    del block
