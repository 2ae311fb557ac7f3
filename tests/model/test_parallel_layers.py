"""The linear every parallel layer computes with: one reduced-precision row takes the CPU kind's faster kernel."""

import pytest
import torch

from granite_bench.model import parallel_layers
from granite_bench.model.parallel_layers import linear


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


def test_avx2_kernels_many_rows_and_fp32_keep_linear(monkeypatch, mv_calls):
    monkeypatch.setattr(parallel_layers, "single_row_uses_mv", lambda: False)
    weight = torch.randn(48, 32, dtype=torch.bfloat16)
    assert torch.equal(linear(torch.ones(1, 32, dtype=torch.bfloat16), weight),
                       torch.nn.functional.linear(torch.ones(1, 32, dtype=torch.bfloat16), weight))
    monkeypatch.setattr(parallel_layers, "single_row_uses_mv", lambda: True)
    linear(torch.ones(2, 32, dtype=torch.bfloat16), weight)                         # two rows: a matmul
    linear(torch.ones(1, 32), weight.float())                                       # fp32: linear either way
    linear(torch.ones(1, 32), weight.float().t().contiguous().t())                  # fp32 column-major too
    assert mv_calls == []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_column_major_weights_keep_their_values_and_one_row_goes_through_mv(monkeypatch, mv_calls, dtype):
    from granite_bench.model.parallel_layers import ColumnParallelLinear, RowParallelLinear, use_column_major_weights
    monkeypatch.setattr(parallel_layers, "single_row_uses_mv", lambda: False)      # AVX2-class kernels
    model = torch.nn.Sequential(ColumnParallelLinear(32, 48, bias=True, dtype=dtype),
                                RowParallelLinear(48, 32, bias=False, dtype=dtype), torch.nn.Embedding(10, 32))
    for p in model.parameters():
        torch.nn.init.normal_(p)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(1, 1, 32).to(dtype)
    row_major_out = [model[0](x), model[1](x.new_ones(1, 1, 48))]
    assert use_column_major_weights(model) == 2 and mv_calls == []
    assert [p.t().is_contiguous() for p in model.parameters() if p.dim() == 2] == [True, True, False]  # not the embedding
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    out = [model[0](x), model[1](x.new_ones(1, 1, 48))]
    assert len(mv_calls) == 2                                                     # one row: column-major mv each
    for got, want in zip(out, row_major_out):                                    # fp32 sums, one rounding apart
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2 * want.float().abs().max().item())
    model[1](model[0](torch.randn(3, 1, 32).to(dtype)))                             # three rows: matmuls
    assert len(mv_calls) == 2 and use_column_major_weights(model) == 0


def test_the_kernel_choice_follows_torchs_dispatch_capability():
    parallel_layers.single_row_uses_mv.cache_clear()
    assert parallel_layers.single_row_uses_mv() == (torch.backends.cpu.get_cpu_capability() == "AVX512")
