"""One weights path: preset checkpoints created once from a seed, loadable by HF, with a realistic logit spread;
one-line PresetErrors for unknown presets and broken checkpoint directories."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import GraniteForCausalLM

from granite_bench.reference import weights
from granite_bench.reference.hf_reference import load_reference
from granite_bench.reference.presets import PresetError, available_presets, load_preset
from granite_bench.reference.weights import INIT_FILE, load_hf_config, preset_config, read_init, resolve_model_dir

TINY_PRESETS = ["tiny-gqa", "tiny-mqa", "tiny-llama3-rope", "tiny-untied"]


def refuse_to_create(*args, **kwargs):
    raise AssertionError("the checkpoint was created again")


def test_preset_checkpoint_is_created_once_and_then_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("GRANITE_BENCH_CACHE", str(tmp_path))
    first = resolve_model_dir("tiny-gqa")
    assert first.is_relative_to(tmp_path)
    assert (first / "config.json").exists() and (first / "model.safetensors").exists()
    monkeypatch.setattr(weights, "create_random_checkpoint", refuse_to_create)
    assert resolve_model_dir("tiny-gqa") == first


def test_preset_checkpoint_loads_with_hf_from_pretrained_and_matches_the_preset(tiny_model_dir):
    model, info = GraniteForCausalLM.from_pretrained(tiny_model_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for key, value in load_preset("tiny-gqa").config.items():
        if key != "rope_parameters":
            assert getattr(model.config, key) == value, key
    assert model.config.rope_parameters["rope_type"] == "default"


def test_preset_records_its_init_beside_the_weights(tiny_model_dir):
    init = read_init(tiny_model_dir)
    assert (tiny_model_dir / INIT_FILE).exists()
    assert init["seed"] == 0 and init["dtype"] == "float32"
    assert {"qk_gain", "final_norm_gain", "target_logit_std"} <= set(init)


def test_same_preset_in_two_caches_gives_identical_weights(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GRANITE_BENCH_CACHE", str(tmp_path))
    again = resolve_model_dir("tiny-gqa")
    assert again != tiny_model_dir
    first, second = load_file(tiny_model_dir / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_num_layers_override_gives_its_own_checkpoint(tiny_model_dir):
    shallow = resolve_model_dir("tiny-gqa", num_layers=1)
    assert shallow != tiny_model_dir
    assert load_hf_config(shallow).num_hidden_layers == 1


@torch.no_grad()
def mean_top1_probability(model: GraniteForCausalLM) -> float:
    tokens = torch.randint(3, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    return model(tokens).logits.softmax(-1).max(-1).values.mean().item()


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_preset_init_gives_a_realistic_logit_spread(preset):
    reference = load_reference(resolve_model_dir(preset))
    uniform = 1 / reference.config.vocab_size
    assert mean_top1_probability(reference) > 50 * uniform


def test_hf_default_init_is_near_uniform():
    """Why the preset init exists: with HF's own init, parity would pass trivially."""
    torch.manual_seed(0)
    model = GraniteForCausalLM(preset_config(load_preset("tiny-gqa"))).eval()
    assert mean_top1_probability(model) < 5 / model.config.vocab_size  # measured 1.4x uniform


def test_unknown_preset_raises_preset_error_listing_the_presets():
    with pytest.raises(PresetError) as err:
        resolve_model_dir("tiny-nonexistent")
    message = str(err.value)
    assert "tiny-nonexistent" in message and "\n" not in message
    for name in available_presets():
        assert name in message


def test_directory_without_config_json_is_a_one_line_preset_error(tmp_path):
    with pytest.raises(PresetError, match="config.json") as err:
        resolve_model_dir(str(tmp_path))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ['{"model_type": "granite", "hidden_size": ', "[]", '"granite"'],
                         ids=["truncated", "array", "string"])
def test_malformed_config_json_is_a_one_line_preset_error(tmp_path, text):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(PresetError, match="config.json") as err:
        load_hf_config(resolve_model_dir(str(tmp_path)))
    assert "\n" not in str(err.value)


def test_config_of_another_model_type_is_a_preset_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(PresetError, match="model_type 'llama'"):
        load_hf_config(tmp_path)
