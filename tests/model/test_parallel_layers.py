"""The linear every parallel layer computes with: one reduced-precision row takes the kernel this host measured
fastest; everything else is nn.functional.linear."""

import pytest
import torch

from granite_bench.model.backend import single_row
from granite_bench.model.backend.parallel_layers import linear


@pytest.fixture
def mv_calls(monkeypatch):
    calls = []
    real_mv = torch.mv
    monkeypatch.setattr(torch, "mv", lambda *args: calls.append(args) or real_mv(*args))
    return calls


@pytest.fixture
def chosen(monkeypatch):
    """The process's kernel choices, replaced by a dict the test fills."""
    choices = {}
    monkeypatch.setattr(single_row, "_chosen", choices)
    return choices


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_one_reduced_precision_row_goes_through_mv_where_mv_was_measured_fastest(mv_calls, chosen, dtype):
    chosen[(dtype, 32)] = "mv"
    weight, bias, x = torch.randn(48, 32).to(dtype), torch.randn(48).to(dtype), torch.randn(1, 1, 32).to(dtype)
    out = linear(x, weight, bias)
    assert len(mv_calls) == 1 and out.shape == (1, 1, 48) and out.dtype == dtype
    torch.testing.assert_close(out.float(), torch.nn.functional.linear(x, weight, bias).float(), rtol=2e-2, atol=2e-2)


def test_one_row_stays_on_linear_bit_for_bit_where_linear_was_measured_fastest(mv_calls, chosen):
    chosen[(torch.bfloat16, 32)] = "linear"
    weight, bias = torch.randn(48, 32, dtype=torch.bfloat16), torch.randn(48, dtype=torch.bfloat16)
    x = torch.randn(1, 1, 32, dtype=torch.bfloat16)
    assert torch.equal(linear(x, weight, bias), torch.nn.functional.linear(x, weight, bias))
    assert mv_calls == []


def test_many_rows_fp32_and_transposed_weights_keep_linear_whatever_was_chosen(mv_calls, chosen):
    weight = torch.randn(48, 32, dtype=torch.bfloat16)
    chosen[(torch.bfloat16, 32)] = chosen[(torch.bfloat16, 48)] = chosen[(torch.float32, 32)] = "mv"
    linear(torch.ones(2, 32, dtype=torch.bfloat16), weight)                         # two rows: a matmul
    linear(torch.ones(1, 32), weight.float())                                       # fp32: linear
    linear(torch.ones(1, 32, dtype=torch.bfloat16), weight.t().contiguous().t())    # input-major layout
    assert mv_calls == []
