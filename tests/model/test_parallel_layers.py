"""The linear every parallel layer computes with: one reduced-precision row takes the CPU kind's faster kernel."""

import pytest
import torch

from granite_bench.model.backend import parallel_layers
from granite_bench.model.backend.parallel_layers import linear


@pytest.fixture
def mv_calls(monkeypatch):
    calls = []
    real_mv = torch.mv
    monkeypatch.setattr(torch, "mv", lambda *args: calls.append(args) or real_mv(*args))
    return calls


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_one_reduced_precision_row_goes_through_mv_where_the_kernels_are_avx512(monkeypatch, mv_calls, dtype):
    monkeypatch.setattr(parallel_layers, "single_row_uses_mv", lambda: True)
    weight, bias, x = torch.randn(48, 32).to(dtype), torch.randn(48).to(dtype), torch.randn(1, 1, 32).to(dtype)
    out = linear(x, weight, bias)
    assert len(mv_calls) == 1 and out.shape == (1, 1, 48) and out.dtype == dtype
    torch.testing.assert_close(out.float(), torch.nn.functional.linear(x, weight, bias).float(), rtol=2e-2, atol=2e-2)


def test_avx2_kernels_many_rows_fp32_and_transposed_weights_keep_linear(monkeypatch, mv_calls):
    monkeypatch.setattr(parallel_layers, "single_row_uses_mv", lambda: False)
    weight = torch.randn(48, 32, dtype=torch.bfloat16)
    assert torch.equal(linear(torch.ones(1, 32, dtype=torch.bfloat16), weight),
                       torch.nn.functional.linear(torch.ones(1, 32, dtype=torch.bfloat16), weight))
    monkeypatch.setattr(parallel_layers, "single_row_uses_mv", lambda: True)
    linear(torch.ones(2, 32, dtype=torch.bfloat16), weight)                         # two rows: a matmul
    linear(torch.ones(1, 32), weight.float())                                       # fp32: linear either way
    linear(torch.ones(1, 32, dtype=torch.bfloat16), weight.t().contiguous().t())    # input-major layout
    assert mv_calls == []


def test_the_kernel_choice_follows_torchs_dispatch_capability():
    parallel_layers.single_row_uses_mv.cache_clear()
    assert parallel_layers.single_row_uses_mv() == (torch.backends.cpu.get_cpu_capability() == "AVX512")
