"""pytest-benchmark micro-benchmarks of the decode hot path: one decode step, a KV-cache write, attention over a
full cache.

CI runs them once each (pyproject addopts carry --benchmark-disable), which checks they work. To time them with a
few rounds and keep the JSON:

    pytest tests/perf -k microbench --benchmark-enable --benchmark-min-rounds=5 \
        --benchmark-json=results/microbench.json
"""

import pytest
import torch

from granite_bench.model.backend.attention import grouped_attention
from granite_bench.model.backend.kv_cache import KVCacheManager

BATCH, Q_HEADS, KV_HEADS, HEAD_DIM, SEQ_LEN = 1, 32, 8, 64, 1024   # granite-3.1-2b's head layout, 1k context


@pytest.fixture(scope="module")
def tiny_runner(tiny_model_dir):
    from granite_bench.runtime.runner import build_neuron_config
    from granite_bench.runtime.select import build_runner
    config = build_neuron_config(batch_size=1, seq_len=256, buckets=[32], output_logits=False)
    runner = build_runner(str(tiny_model_dir), neuron_config=config)
    runner.context_encode([list(range(3, 35))])
    yield runner
    runner.close()


def test_microbench_decode_step(benchmark, tiny_runner):
    next_ids, positions = torch.tensor([7]), torch.tensor([32])
    logits = benchmark(tiny_runner.token_generate, next_ids, positions)
    assert logits.shape == (1, tiny_runner.hf_config.vocab_size)


def test_microbench_kv_cache_write(benchmark):
    cache = KVCacheManager(1, BATCH, KV_HEADS, SEQ_LEN, HEAD_DIM, torch.float32)
    k, v = torch.randn(BATCH, KV_HEADS, 1, HEAD_DIM), torch.randn(BATCH, KV_HEADS, 1, HEAD_DIM)
    positions = torch.tensor([SEQ_LEN - 1] * BATCH)
    benchmark(cache.update_token_generation, 0, k, v, positions)
    k_cache, v_cache = cache.caches(0)
    assert torch.equal(k_cache[:, :, SEQ_LEN - 1], k[:, :, 0]) and torch.equal(v_cache[:, :, SEQ_LEN - 1], v[:, :, 0])


def test_microbench_attention_over_full_cache(benchmark):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(BATCH, Q_HEADS, 1, HEAD_DIM, generator=gen)
    k = torch.randn(BATCH, KV_HEADS, SEQ_LEN, HEAD_DIM, generator=gen)
    v = torch.randn(BATCH, KV_HEADS, SEQ_LEN, HEAD_DIM, generator=gen)
    mask = torch.ones(BATCH, 1, 1, SEQ_LEN, dtype=torch.bool)
    out = benchmark(grouped_attention, q, k, v, mask, 0.015625)
    assert out.shape == (BATCH, Q_HEADS, 1, HEAD_DIM)


@pytest.fixture(scope="module")
def bf16_projection():
    """granite-3.1-2b's gate projection in bf16 (8192 x 2048, 32 MiB: as large as this host's L3) and one row."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(8192, 2048, generator=gen).to(torch.bfloat16), torch.randn(1, 1, 2048, generator=gen).bfloat16()


def test_microbench_one_bf16_row_through_the_measured_kernel(benchmark, bf16_projection):
    from granite_bench.model.backend.parallel_layers import linear
    weight, x = bf16_projection
    out = benchmark(linear, x, weight)
    torch.testing.assert_close(out.float(), torch.nn.functional.linear(x.float(), weight.float()), rtol=2e-2, atol=0.5)


def test_microbench_one_bf16_decode_query_over_a_full_cache(benchmark):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(BATCH, Q_HEADS, 1, HEAD_DIM, generator=gen).bfloat16()
    k = torch.randn(BATCH, KV_HEADS, SEQ_LEN, HEAD_DIM, generator=gen).bfloat16()
    v = torch.randn(BATCH, KV_HEADS, SEQ_LEN, HEAD_DIM, generator=gen).bfloat16()
    mask = torch.zeros(BATCH, 1, 1, SEQ_LEN, dtype=torch.bfloat16)
    out = benchmark(grouped_attention, q, k, v, mask, 0.015625)
    assert out.shape == (BATCH, Q_HEADS, 1, HEAD_DIM) and out.dtype == torch.bfloat16


@pytest.mark.parametrize("kernel", ["linear", "mv", "aten_linear"])
def test_microbench_one_bf16_row_per_candidate_kernel(benchmark, bf16_projection, kernel):
    """Each candidate single_row measures, on the same projection: which one this host should pick."""
    from granite_bench.model.backend.single_row import KERNELS
    weight, x = bf16_projection
    out = benchmark(KERNELS[kernel], x, weight)
    assert out.shape == (1, 1, 8192) and out.dtype == torch.bfloat16
