"""HF Granite checkpoint -> Neuron-style state dict: QKV fusion, tied/untied LM head, dtype cast, TP shards."""

import pytest
import torch
from transformers import GraniteConfig, GraniteForCausalLM

from granite_bench.model.config import NeuronConfig
from granite_bench.model.backend.head_sharding import plan_heads
from granite_bench.model.modeling_granite import NeuronGraniteForCausalLM
from granite_bench.model.backend.checkpoint import load_hf_state_dict
from granite_bench.model.modeling_granite import convert_hf_state_dict

HEAD_DIM = 8
KV = 4 * HEAD_DIM  # rows of k_proj / v_proj (4 KV heads)
Q = 8 * HEAD_DIM   # rows of q_proj (8 query heads)


def small_config(**changes) -> GraniteConfig:
    """8 query heads over 4 KV heads (grouped sharding at tp 2 and 4), odd vocabulary (padded LM head), biases."""
    kwargs = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
                  num_key_value_heads=4, attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
                  max_position_embeddings=256)
    return GraniteConfig(**{**kwargs, **changes})


@pytest.fixture(scope="module")
def config() -> GraniteConfig:
    return small_config()


@pytest.fixture(scope="module")
def hf_state(config) -> dict[str, torch.Tensor]:
    """Every HF parameter random (biases included), so a misplaced block cannot match by accident."""
    with torch.device("meta"):
        model = GraniteForCausalLM(config)
    gen = torch.Generator().manual_seed(0)
    return {name: torch.randn(param.shape, generator=gen) for name, param in model.state_dict().items()}


def convert(hf_state, config, tp=1, rank=0, dtype=torch.float32, fused_qkv=True):
    return convert_hf_state_dict(hf_state, config, rank, tp, dtype, fused_qkv)


@pytest.mark.parametrize("kind", ["weight", "bias"])
def test_fused_qkv_rows_are_q_then_k_then_v_at_tp1(hf_state, config, kind):
    out = convert(hf_state, config)
    for layer in range(config.num_hidden_layers):
        src = f"model.layers.{layer}.self_attn"
        fused = out[f"layers.{layer}.self_attn.qkv_proj.{kind}"]
        assert fused.shape[0] == Q + 2 * KV
        assert torch.equal(fused[:Q], hf_state[f"{src}.q_proj.{kind}"])
        assert torch.equal(fused[Q:Q + KV], hf_state[f"{src}.k_proj.{kind}"])
        assert torch.equal(fused[Q + KV:], hf_state[f"{src}.v_proj.{kind}"])


def test_unfused_keeps_q_k_v_projections_apart(hf_state, config):
    out = convert(hf_state, config, fused_qkv=False)
    for name in ("q_proj", "k_proj", "v_proj"):
        expected = hf_state[f"model.layers.1.self_attn.{name}.weight"]
        assert torch.equal(out[f"layers.1.self_attn.{name}.weight"], expected)
    assert not any("qkv_proj" in key for key in out)


@pytest.mark.parametrize("fused_qkv", [True, False])
def test_converted_keys_and_shapes_match_the_neuron_model(hf_state, config, fused_qkv):
    neuron_config = NeuronConfig(sequence_length=32, fused_qkv=fused_qkv)
    with torch.device("meta"):
        model = NeuronGraniteForCausalLM(config, neuron_config)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    out = convert(hf_state, config, fused_qkv=fused_qkv)
    assert {key: tuple(value.shape) for key, value in out.items()} == expected


def test_tied_checkpoint_gets_an_lm_head_equal_to_the_embedding(tiny_model_dir):
    hf = load_hf_state_dict(tiny_model_dir)
    assert "lm_head.weight" not in hf  # save_pretrained drops the tied copy
    tied_config = GraniteConfig.from_pretrained(tiny_model_dir)
    out = convert_hf_state_dict(hf, tied_config, 0, 1, torch.float32)
    assert torch.equal(out["lm_head.weight"], hf["model.embed_tokens.weight"])


def test_untied_checkpoint_uses_its_own_lm_head(hf_state, config):
    out = convert(hf_state, config)
    assert torch.equal(out["lm_head.weight"], hf_state["lm_head.weight"])
    assert not torch.equal(out["lm_head.weight"], hf_state["model.embed_tokens.weight"])


def test_missing_lm_head_without_tied_embeddings_is_refused(hf_state, config):
    without_head = {key: value for key, value in hf_state.items() if key != "lm_head.weight"}
    with pytest.raises(KeyError, match="lm_head"):
        convert(without_head, config)


def test_every_tensor_is_cast_to_bf16(hf_state, config):
    out = convert(hf_state, config, dtype=torch.bfloat16)
    assert {value.dtype for value in out.values()} == {torch.bfloat16}
    assert torch.equal(out["layers.0.mlp.gate_proj.weight"], hf_state["model.layers.0.mlp.gate_proj.weight"].bfloat16())
    assert torch.equal(out["embed_tokens.weight"], hf_state["model.embed_tokens.weight"].bfloat16())


def split_qkv(fused: torch.Tensor, tp: int):
    q_rows, kv_rows = Q // tp, KV // tp
    return fused.split([q_rows, kv_rows, kv_rows], dim=0)


@pytest.mark.parametrize("tp", [2, 4])
def test_grouped_shards_concatenate_back_to_the_original_weights(hf_state, config, tp):
    assert plan_heads(8, 4, tp, HEAD_DIM).strategy == "grouped"
    shards = [convert(hf_state, config, tp=tp, rank=rank) for rank in range(tp)]

    def joined(key, dim):
        return torch.cat([shard[key] for shard in shards], dim=dim)

    for layer in range(config.num_hidden_layers):
        src, dst = f"model.layers.{layer}", f"layers.{layer}"
        for kind in ("weight", "bias"):
            blocks = [split_qkv(shard[f"{dst}.self_attn.qkv_proj.{kind}"], tp) for shard in shards]
            for index, name in enumerate(("q_proj", "k_proj", "v_proj")):  # each rank holds [q_r; k_r; v_r]
                assert torch.equal(torch.cat([b[index] for b in blocks]), hf_state[f"{src}.self_attn.{name}.{kind}"])
        assert torch.equal(joined(f"{dst}.self_attn.o_proj.weight", 1), hf_state[f"{src}.self_attn.o_proj.weight"])
        for shard in shards:  # row-parallel biases are added once after the all-reduce: every rank has all of it
            assert torch.equal(shard[f"{dst}.self_attn.o_proj.bias"], hf_state[f"{src}.self_attn.o_proj.bias"])
            assert torch.equal(shard[f"{dst}.mlp.down_proj.bias"], hf_state[f"{src}.mlp.down_proj.bias"])
            assert torch.equal(shard[f"{dst}.input_layernorm.weight"], hf_state[f"{src}.input_layernorm.weight"])
        for name in ("gate_proj", "up_proj"):
            assert torch.equal(joined(f"{dst}.mlp.{name}.weight", 0), hf_state[f"{src}.mlp.{name}.weight"])
            assert torch.equal(joined(f"{dst}.mlp.{name}.bias", 0), hf_state[f"{src}.mlp.{name}.bias"])
        assert torch.equal(joined(f"{dst}.mlp.down_proj.weight", 1), hf_state[f"{src}.mlp.down_proj.weight"])
    assert torch.equal(joined("embed_tokens.weight", 1), hf_state["model.embed_tokens.weight"])


@pytest.mark.parametrize("tp", [2, 4])
def test_lm_head_is_padded_to_a_multiple_of_tp_with_zero_rows(hf_state, config, tp):
    lm_head = torch.cat([convert(hf_state, config, tp=tp, rank=rank)["lm_head.weight"] for rank in range(tp)])
    vocab = config.vocab_size
    assert lm_head.shape[0] % tp == 0 and lm_head.shape[0] - vocab < tp
    assert torch.equal(lm_head[:vocab], hf_state["lm_head.weight"])
    assert not lm_head[vocab:].any()


def test_replicated_kv_shards_hold_their_kv_head_and_its_query_heads(hf_state, config):
    """tp 8 over 4 KV heads: each KV head goes to two ranks, each taking half of its query group."""
    tp = 8
    plan = plan_heads(8, 4, tp, HEAD_DIM)
    assert plan.strategy == "replicate_kv"
    src = "model.layers.0.self_attn"
    for rank in range(tp):
        q, k, v = convert(hf_state, config, tp=tp, rank=rank)["layers.0.self_attn.qkv_proj.weight"].split(
            [HEAD_DIM, HEAD_DIM, HEAD_DIM])
        (kv_head,), (q_head,) = plan.kv_heads[rank], plan.q_heads[rank]
        assert kv_head == rank // 2 and q_head == rank
        assert torch.equal(k, hf_state[f"{src}.k_proj.weight"][kv_head * HEAD_DIM:(kv_head + 1) * HEAD_DIM])
        assert torch.equal(v, hf_state[f"{src}.v_proj.weight"][kv_head * HEAD_DIM:(kv_head + 1) * HEAD_DIM])
        assert torch.equal(q, hf_state[f"{src}.q_proj.weight"][q_head * HEAD_DIM:(q_head + 1) * HEAD_DIM])


def test_load_hf_state_dict_reads_a_sharded_checkpoint(tmp_path):
    config = small_config(attention_bias=False, mlp_bias=False)
    model = GraniteForCausalLM(config)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    loaded = load_hf_state_dict(tmp_path)
    expected = model.state_dict()
    assert set(loaded) == set(expected)
    for key, value in loaded.items():
        assert torch.equal(value, expected[key])


def test_load_hf_state_dict_names_a_missing_weights_file(tmp_path):
    from granite_bench.model.backend.checkpoint import CheckpointError
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_hf_state_dict(tmp_path)


def test_sharded_checkpoint_is_read_lazily_and_converts_like_the_loaded_dict(hf_state, config, tmp_path,
                                                                             monkeypatch):
    from safetensors import safe_open

    from granite_bench.model.backend import checkpoint as sd
    from granite_bench.reference.weights import write_sharded_safetensors
    write_sharded_safetensors(iter(hf_state.items()), tmp_path, 20_000)
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    reads = []
    checkpoint = load_hf_state_dict(tmp_path)
    assert set(checkpoint) == set(hf_state)

    class CountingOpen:  # counts tensors read, to show nothing is read before conversion asks for it
        def __init__(self, *args, **kwargs):
            self.inner = safe_open(*args, **kwargs)

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def keys(self):
            return self.inner.keys()

        def get_tensor(self, name):
            reads.append(name)
            return self.inner.get_tensor(name)

    monkeypatch.setattr(sd, "safe_open", CountingOpen)
    lazy = load_hf_state_dict(tmp_path)
    assert reads == []
    for tp, rank in [(1, 0), (2, 1)]:
        expected = convert(hf_state, config, tp, rank)
        actual = convert(lazy, config, tp, rank)
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert set(reads) == set(hf_state)


def test_index_naming_a_missing_shard_is_refused_in_one_line(hf_state, tmp_path):
    from granite_bench.model.backend.checkpoint import CheckpointError
    from granite_bench.reference.weights import write_sharded_safetensors
    write_sharded_safetensors(iter(hf_state.items()), tmp_path, 20_000)
    victim = sorted(tmp_path.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name) as err:
        load_hf_state_dict(tmp_path)
    assert "\n" not in str(err.value)
