"""The HF reference under a memory budget: accelerate streams the layers that do not fit from the checkpoint files,
and the logits do not change."""

import pytest
import torch

from granite_bench.reference.hf_reference import (MemoryBudgetError, attention_for_length, load_reference,
                                                  offload_device_map, parse_memory)


def layer_and_resident_bytes(model):
    layer = sum(p.numel() for p in model.model.layers[0].parameters()) * 4
    resident = sum(p.numel() for n, p in model.named_parameters() if ".layers." not in n) * 4
    return layer, resident


def test_reference_under_a_budget_of_two_layers_streams_the_rest_and_gives_the_same_logits(tiny_model_dir, tmp_path):
    full = load_reference(tiny_model_dir)
    layer, resident = layer_and_resident_bytes(full)
    budget = resident + 2 * layer + layer // 2
    device_map = offload_device_map(tiny_model_dir, budget)
    assert [device_map[f"model.layers.{i}"] for i in range(4)] == ["cpu", "cpu", "disk", "disk"]
    offloaded = load_reference(tiny_model_dir, max_memory=budget, offload_dir=tmp_path / "offload")
    in_memory = sum(p.numel() * 4 for p in offloaded.parameters() if p.device.type == "cpu")
    assert in_memory <= budget
    assert list(tmp_path.joinpath("offload").glob("*")) == []  # streamed from the checkpoint's own files
    ids = torch.tensor([[5, 9, 33, 120, 7, 64, 900]])
    with torch.no_grad():
        expected, actual = full(ids).logits, offloaded(ids).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def test_budget_below_one_layer_is_refused_with_the_size_needed(tiny_model_dir):
    with pytest.raises(MemoryBudgetError, match="give at least"):
        offload_device_map(tiny_model_dir, 1024)


@pytest.mark.parametrize("text, expected", [("8GiB", 8 * 2**30), ("512MiB", 512 * 2**20), ("2GB", 2 * 10**9),
                                            ("1000", 1000)])
def test_memory_sizes_parse_like_accelerate_spells_them(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["lots", "-1GiB", "0"])
def test_bad_memory_sizes_are_refused(text):
    with pytest.raises(MemoryBudgetError):
        parse_memory(text)


def test_long_sequences_use_sdpa_short_ones_the_eager_formula():
    assert attention_for_length(200) == "eager"
    assert attention_for_length(16_008) == "sdpa"
