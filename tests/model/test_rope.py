"""RoPE against HF Transformers: inverse frequencies, cos/sin tables, rotation, config reading, refusals."""

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import GraniteConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.granite import modeling_granite as hf

from granite_bench.model.backend.rope import RotaryEmbedding, apply_rotary_pos_emb, inv_frequencies, rope_parameters

HEAD_DIM = 32
ROPE_CONFIGS = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    # original context 64: wavelengths on both sides of the blend band, so all three llama3 branches are used
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
}


def granite_config(rope: dict) -> GraniteConfig:
    return GraniteConfig(hidden_size=HEAD_DIM * 4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, rope_parameters=dict(rope))


def ours_inv_freq(config) -> torch.Tensor:
    return inv_frequencies(HEAD_DIM, rope_parameters(config), config.max_position_embeddings)


@pytest.mark.parametrize("rope_type", list(ROPE_CONFIGS))
def test_inv_frequencies_equal_hf_granite_rotary_embedding(rope_type):
    config = granite_config(ROPE_CONFIGS[rope_type])
    reference = hf.GraniteRotaryEmbedding(config)
    assert reference.attention_scaling == 1.0  # so cos/sin carry no extra factor we would have to apply
    torch.testing.assert_close(ours_inv_freq(config), reference.inv_freq, rtol=1e-6, atol=0)


@pytest.mark.parametrize("rope_type", ["linear", "llama3"])
def test_inv_frequencies_equal_hf_rope_init_functions(rope_type):
    config = granite_config(ROPE_CONFIGS[rope_type])
    expected, attention_factor = ROPE_INIT_FUNCTIONS[rope_type](config)
    assert attention_factor == 1.0
    torch.testing.assert_close(ours_inv_freq(config), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("rope_type", ["linear", "llama3"])
def test_scaled_rope_types_change_the_frequencies(rope_type):
    scaled = ours_inv_freq(granite_config(ROPE_CONFIGS[rope_type]))
    plain = inv_frequencies(HEAD_DIM, {"rope_type": "default", "rope_theta": ROPE_CONFIGS[rope_type]["rope_theta"]},
                            4096)
    assert not torch.allclose(scaled, plain)


@pytest.mark.parametrize("rope_type", list(ROPE_CONFIGS))
def test_cos_sin_tables_equal_hf_at_several_positions(rope_type):
    config = granite_config(ROPE_CONFIGS[rope_type])
    positions = torch.tensor([[0, 1, 7, 63, 64, 95], [3, 5, 8, 13, 21, 34]])
    ours = RotaryEmbedding(HEAD_DIM, 96, rope_parameters(config), config.max_position_embeddings)
    cos, sin = ours(positions)  # [B, 1, L, d]
    ref_cos, ref_sin = hf.GraniteRotaryEmbedding(config)(torch.zeros(1, dtype=torch.float32), positions)
    assert cos.dtype == sin.dtype == torch.float32
    torch.testing.assert_close(cos.squeeze(1), ref_cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin.squeeze(1), ref_sin, rtol=0, atol=1e-6)


def test_apply_rotary_pos_emb_equals_hf():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 6, HEAD_DIM, generator=gen)
    k = torch.randn(2, 2, 6, HEAD_DIM, generator=gen)
    config = granite_config(ROPE_CONFIGS["default"])
    positions = torch.arange(6).expand(2, 6)
    cos, sin = RotaryEmbedding(HEAD_DIM, 16, rope_parameters(config), 4096)(positions)
    q_rot, k_rot = apply_rotary_pos_emb(q, k, cos, sin)
    ref_q, ref_k = hf.apply_rotary_pos_emb(q, k, cos.squeeze(1), sin.squeeze(1))
    torch.testing.assert_close(q_rot, ref_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(k_rot, ref_k, rtol=0, atol=1e-6)


def test_rope_parameters_reads_a_transformers_4_config_with_top_level_theta_and_scaling():
    config = SimpleNamespace(rope_theta=500000.0, rope_scaling={"type": "linear", "factor": 4.0})
    params = rope_parameters(config)
    assert params["rope_type"] == "linear"
    assert params["rope_theta"] == 500000.0
    assert params["factor"] == 4.0


def test_rope_parameters_of_a_transformers_4_config_without_scaling_is_default():
    params = rope_parameters(SimpleNamespace(rope_theta=10000000.0, rope_scaling=None))
    assert params["rope_type"] == "default"
    assert params["rope_theta"] == 10000000.0


def test_rope_parameters_reads_a_transformers_5_config():
    config = granite_config(ROPE_CONFIGS["llama3"])
    params = rope_parameters(config)
    for key, value in ROPE_CONFIGS["llama3"].items():
        assert params[key] == value


def test_transformers_4_config_json_gives_hf_frequencies(tmp_path):
    """A checkpoint written by transformers 4.x (rope_theta + rope_scaling at the top level), loaded by 5.x."""
    data = {"model_type": "granite", "hidden_size": HEAD_DIM * 4, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 4096, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 64}}
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = GraniteConfig.from_pretrained(tmp_path)
    params = rope_parameters(config)
    assert params["rope_type"] == "llama3"
    assert params["rope_theta"] == 500000.0
    torch.testing.assert_close(ours_inv_freq(config), hf.GraniteRotaryEmbedding(config).inv_freq, rtol=1e-6, atol=0)


@pytest.mark.parametrize("rope_type", ["yarn", "dynamic", "longrope"])
def test_unsupported_rope_type_is_refused_naming_it(rope_type):
    params = {"rope_type": rope_type, "rope_theta": 10000.0, "factor": 2.0}
    with pytest.raises(ValueError, match=f"rope_type '{rope_type}'"):
        inv_frequencies(HEAD_DIM, params, 4096)
    with pytest.raises(ValueError, match=rope_type):
        RotaryEmbedding(HEAD_DIM, 16, params, 4096)
