"""The one-row kernel choice: measured once per (dtype, row length) and process, on a bounded slice of a real weight,
linear unless another kernel beats it by the margin, never measured inside a compiled graph."""

import pytest
import torch
from torch import nn

from granite_bench.model.backend import single_row


@pytest.fixture(autouse=True)
def chosen(monkeypatch):
    choices = {}
    monkeypatch.setattr(single_row, "_chosen", choices)
    return choices


@pytest.mark.parametrize(("best", "expected"), [
    ({"linear": 1.0, "mv": 0.85}, "mv"),       # under 90% of linear's time: mv
    ({"linear": 1.0, "mv": 0.95}, "linear"),   # a close call keeps linear
    ({"linear": 1.0, "mv": 2.0}, "linear"),
])
def test_another_kernel_replaces_linear_only_when_it_beats_it_by_the_margin(best, expected):
    assert single_row.pick(best) == expected


def test_the_choice_is_measured_once_per_dtype_and_row_length(monkeypatch, chosen):
    measured = []
    monkeypatch.setattr(single_row, "measure", lambda w: measured.append(tuple(w.shape)) or {"linear": 2.0, "mv": 1.0})
    assert single_row.kernel_for(torch.zeros(8, 16, dtype=torch.bfloat16)) == "mv"
    single_row.kernel_for(torch.zeros(4, 16, dtype=torch.bfloat16))     # same row length: cached
    single_row.kernel_for(torch.zeros(8, 32, dtype=torch.bfloat16))     # another row length
    single_row.kernel_for(torch.zeros(8, 16, dtype=torch.float16))      # another dtype
    assert measured == [(8, 16), (8, 32), (8, 16)]
    assert chosen == {(torch.bfloat16, 16): "mv", (torch.bfloat16, 32): "mv", (torch.float16, 16): "mv"}


def test_measurement_times_every_kernel_on_a_bounded_slice_of_the_weight(monkeypatch):
    monkeypatch.setattr(single_row, "PROBE_BYTES", 64 * 16 * 2)
    monkeypatch.setattr(single_row, "COLD_BYTES", 300 * 16 * 2)    # the weight is large enough to be read cold
    shapes = {name: [] for name in single_row.KERNELS}

    def recording(name):
        return lambda x, w, bias=None: shapes[name].append((tuple(x.shape), tuple(w.shape))) or x

    monkeypatch.setattr(single_row, "KERNELS", {name: recording(name) for name in single_row.KERNELS})
    best = single_row.measure(torch.zeros(3, 100, 16, dtype=torch.bfloat16))   # 300 rows of 16: probe 64 rows
    for name, calls in shapes.items():
        assert calls == [((1, 16), (64, 16))] * (single_row.ROUNDS + 1)
        assert 0 <= best[name] < float("inf")


def test_a_weight_smaller_than_the_cold_size_is_timed_on_a_scratch_matrix_of_its_row_length_that_large(monkeypatch):
    monkeypatch.setattr(single_row, "COLD_BYTES", 1000 * 16 * 2)
    small = torch.zeros(3, 100, 16, dtype=torch.bfloat16)
    scratch = single_row.cold_matrix(small)
    assert scratch.shape == (1000, 16) and scratch.dtype == torch.bfloat16
    assert scratch.untyped_storage().data_ptr() != small.untyped_storage().data_ptr()
    large = torch.zeros(2000, 16, dtype=torch.bfloat16)
    assert single_row.cold_matrix(large).untyped_storage().data_ptr() == large.untyped_storage().data_ptr()


def test_a_real_measurement_on_this_host_times_every_kernel():
    best = single_row.measure(torch.randn(256, 128, dtype=torch.bfloat16))
    assert set(best) == {"linear", "mv", "aten_linear"} and all(0 <= t < float("inf") for t in best.values())
    assert single_row.pick(best) in single_row.KERNELS


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_kernel_computes_linear_to_the_dtypes_rounding_and_oneDNN_is_switched_back_on(dtype):
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(48, 64, generator=gen).to(dtype), torch.randn(48, generator=gen).to(dtype)
    x = torch.randn(1, 1, 64, generator=gen).to(dtype)
    expected = torch.nn.functional.linear(x.float(), weight.float(), bias.float())
    enabled = torch._C._get_mkldnn_enabled()
    for name, kernel in single_row.KERNELS.items():
        out = kernel(x, weight, bias)
        assert out.shape == (1, 1, 48) and out.dtype == dtype, name
        torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=5e-2, msg=name)
    assert torch._C._get_mkldnn_enabled() == enabled


def test_a_compiled_graph_uses_linear_whatever_was_measured(monkeypatch, chosen):
    chosen[(torch.bfloat16, 16)] = "aten_linear"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(single_row, "measure", lambda w: pytest.fail("measured while compiling"))
    assert single_row.kernel_for(torch.zeros(8, 16, dtype=torch.bfloat16)) == "linear"
    assert single_row.kernel_for(torch.zeros(8, 32, dtype=torch.bfloat16)) == "linear"
    assert chosen == {(torch.bfloat16, 16): "aten_linear"}


def test_a_model_load_measures_each_reduced_precision_row_length_of_its_matrices(monkeypatch):
    measured = []
    monkeypatch.setattr(single_row, "measure", lambda w: measured.append(tuple(w.shape)) or {"linear": 1.0, "mv": 2.0})
    model = nn.Sequential(nn.Linear(16, 8, bias=False), nn.Linear(8, 16), nn.Linear(16, 4), nn.Linear(16, 5))
    model[:3].to(torch.bfloat16)                          # the fp32 layer and every bias are not measured
    assert single_row.choose_for_model(model) == {(torch.bfloat16, 16): "linear", (torch.bfloat16, 8): "linear"}
    assert measured == [(8, 16), (16, 8)]
