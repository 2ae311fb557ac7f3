"""Weights moved into memory advised for transparent huge pages keep their values, layout and sharing."""

import os

import types

import pytest
import torch
from torch import nn

from granite_bench.runtime import huge_pages
from granite_bench.runtime.huge_pages import huge_page_tensor, move_to_huge_pages, thp_mode

MIB = 2**20
needs_advice = pytest.mark.skipif(not huge_pages.huge_pages_available(), reason="no MADV_HUGEPAGE on this OS")


def anon_huge_bytes() -> int:
    with open(f"/proc/{os.getpid()}/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1]) * 1024
    return 0


def test_thp_mode_is_the_bracketed_word(tmp_path):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    assert thp_mode(setting) == "madvise"
    assert thp_mode(tmp_path / "missing") == "unknown"


@needs_advice
def test_moved_tensors_keep_values_strides_and_sharing():
    first = nn.Linear(512, 2048, bias=False).requires_grad_(False)
    tied = nn.Linear(2048, 512, bias=False).requires_grad_(False)
    tied.weight = first.weight                                         # one Parameter in two modules
    model = nn.Sequential(first, tied)
    model.register_buffer("transposed", torch.randn(2048, 600).t().contiguous().t())   # input-major layout
    model.register_buffer("small", torch.randn(8))                    # below the size worth moving
    weight, transposed, small_ptr = first.weight.clone(), model.transposed.clone(), model.small.data_ptr()
    param = first.weight

    moved = move_to_huge_pages(model)

    assert moved >= (2048 * 512 + 2048 * 600) * 4
    assert first.weight is param and tied.weight is first.weight      # same Parameter objects, still shared
    assert torch.equal(first.weight, weight) and torch.equal(model.transposed, transposed)
    assert model.transposed.stride() == transposed.stride() == (1, 2048)
    assert model.small.data_ptr() == small_ptr


@needs_advice
@pytest.mark.skipif(thp_mode() not in ("always", "madvise"), reason="transparent huge pages are off on this host")
def test_an_advised_tensor_is_backed_by_huge_pages_once_written():
    before = anon_huge_bytes()
    tensor = huge_page_tensor((16 * MIB // 4,), torch.float32).fill_(1.0)
    assert anon_huge_bytes() - before >= 8 * MIB                       # most of its 16 MiB in 2 MiB pages
    assert tensor.sum().item() == tensor.numel()


def test_perf_runners_move_their_weights_and_other_runners_keep_the_loaded_memory(tiny_model_dir, monkeypatch):
    from granite_bench.perf.grid import PerfPoint
    from granite_bench.perf.sweep import default_build_runner
    from granite_bench.runtime import huge_pages as huge_pages_module
    from granite_bench.runtime.select import build_runner
    calls = []
    monkeypatch.setattr(huge_pages_module, "move_to_huge_pages", lambda model: calls.append(model) or 0)
    build_runner(str(tiny_model_dir), batch_size=1, seq_len=32, buckets=[8])  # parity, eval: no extra copy
    assert calls == []
    point = PerfPoint(model=str(tiny_model_dir), layers=None, dtype="float32", device="cpu", tp=1, compile=False,
                      batch_size=1, bucket=8, prompt_len=4, new_tokens=2, seq_len=32)
    runner = default_build_runner(point, types.SimpleNamespace(buckets=[8]))
    assert calls == [runner.model]


@needs_advice
def test_a_model_moved_whole_computes_the_same_logits(tiny_model_dir):
    from granite_bench.runtime.select import build_runner
    runner = build_runner(str(tiny_model_dir), batch_size=1, seq_len=32, buckets=[8])
    prompt = [[5, 9, 13, 17]]
    before = runner.generate(prompt, 4).logits
    runner.reset()
    ptrs = {name: p.data_ptr() for name, p in runner.model.named_parameters()}
    assert move_to_huge_pages(runner.model, min_bytes=1) > 0            # the tiny model's tensors are all small
    assert all(p.data_ptr() != ptrs[name] for name, p in runner.model.named_parameters())
    assert torch.equal(runner.generate(prompt, 4).logits, before)
