"""GraniteAttention (prefill and decode paths) against HF's eager GraniteAttention on the same weights."""

import math

import pytest
import torch
from transformers import GraniteConfig
from transformers.models.granite import modeling_granite as hf

from granite_bench.model.backend import attention as attention_module
from granite_bench.model.backend.attention import GraniteAttention, HeadLayout, grouped_attention, one_query_attention
from granite_bench.model.backend.kv_cache import KVCacheManager
from granite_bench.model.backend.rope import RotaryEmbedding, rope_parameters
from granite_bench.model.backend.step import DecodeStep

HIDDEN, HEADS, HEAD_DIM, SEQ = 64, 4, 16, 32
ATTENTION_MULTIPLIER = 0.0625  # far from 1/sqrt(HEAD_DIM) = 0.25
ATOL = 2e-5


def make_config(kv_heads: int, attention_multiplier: float = ATTENTION_MULTIPLIER) -> GraniteConfig:
    config = GraniteConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=kv_heads,
                           attention_multiplier=attention_multiplier, max_position_embeddings=4096,
                           rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    config._attn_implementation = "eager"
    return config


@torch.no_grad()
def make_pair(kv_heads: int, fused_qkv: bool = True, seed: int = 0):
    """HF attention with random weights (q/k large enough for a peaked softmax) and ours with the same weights."""
    config = make_config(kv_heads)
    reference = hf.GraniteAttention(config, layer_idx=0).eval()
    gen = torch.Generator().manual_seed(seed)
    for name, linear in (("q", reference.q_proj), ("k", reference.k_proj), ("v", reference.v_proj),
                         ("o", reference.o_proj)):
        gain = 2.0 if name in "qk" else 1.0
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=gen) * gain / math.sqrt(linear.in_features))
    layout = HeadLayout(HEADS, kv_heads, HEAD_DIM)
    ours = GraniteAttention(config, layout, layer_idx=0, dtype=torch.float32, fused_qkv=fused_qkv).eval()
    if fused_qkv:
        ours.qkv_proj.weight.copy_(torch.cat([reference.q_proj.weight, reference.k_proj.weight,
                                              reference.v_proj.weight]))
    else:
        for name in ("q_proj", "k_proj", "v_proj"):
            getattr(ours, name).weight.copy_(getattr(reference, name).weight)
    ours.o_proj.weight.copy_(reference.o_proj.weight)
    return config, reference, ours


def rotary(config, position_ids: torch.Tensor):
    return RotaryEmbedding(HEAD_DIM, SEQ, rope_parameters(config), config.max_position_embeddings)(position_ids)


@torch.no_grad()
def hf_attention(reference, config, hidden: torch.Tensor) -> torch.Tensor:
    """HF eager attention over one unpadded sequence with a causal mask: [B, L, H]."""
    length = hidden.shape[1]
    positions = torch.arange(length)[None]
    cos, sin = hf.GraniteRotaryEmbedding(config)(hidden, positions)
    causal = torch.full((length, length), torch.finfo(torch.float32).min).triu(1)[None, None]
    return reference(hidden, position_embeddings=(cos, sin), attention_mask=causal)[0]


def kv_cache(kv_heads: int, batch: int) -> KVCacheManager:
    return KVCacheManager(1, batch, kv_heads, SEQ, HEAD_DIM, torch.float32)


@torch.no_grad()
def prefill(ours, config, hidden: torch.Tensor, lengths: list[int], cache: KVCacheManager) -> torch.Tensor:
    """Our context-encoding path over right-padded rows of `lengths` real tokens."""
    batch, length, _ = hidden.shape
    attention_mask = torch.arange(length)[None] < torch.tensor(lengths)[:, None]  # [B, L]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    mask = causal[None, None] & attention_mask[:, None, None, :]
    cos, sin = rotary(config, torch.arange(length).expand(batch, length))
    return ours(hidden, DecodeStep(cos, sin, mask), cache)


@torch.no_grad()
def decode(ours, config, hidden: torch.Tensor, positions: list[int], cache: KVCacheManager,
           kv_len: int = SEQ) -> torch.Tensor:
    """Our token-generation path: one token per row [B, 1, H] at its own position."""
    positions = torch.tensor(positions)
    mask = (torch.arange(kv_len)[None] <= positions[:, None])[:, None, None, :]
    cos, sin = rotary(config, positions[:, None])
    return ours(hidden, DecodeStep(cos, sin, mask, positions=positions, kv_len=kv_len), cache)


LAYOUTS = pytest.mark.parametrize("kv_heads", [2, 1], ids=["gqa", "mqa"])


@LAYOUTS
@pytest.mark.parametrize("fused_qkv", [True, False], ids=["fused", "unfused"])
def test_prefill_equals_hf_attention(kv_heads, fused_qkv):
    config, reference, ours = make_pair(kv_heads, fused_qkv)
    hidden = torch.randn(2, 12, HIDDEN, generator=torch.Generator().manual_seed(1))
    out = prefill(ours, config, hidden, [12, 12], kv_cache(kv_heads, 2))
    torch.testing.assert_close(out, hf_attention(reference, config, hidden), rtol=0, atol=ATOL)


@LAYOUTS
def test_prefill_of_right_padded_rows_equals_hf_on_each_row_alone(kv_heads):
    config, reference, ours = make_pair(kv_heads)
    lengths = [5, 12]
    hidden = torch.randn(2, 12, HIDDEN, generator=torch.Generator().manual_seed(2))
    out = prefill(ours, config, hidden, lengths, kv_cache(kv_heads, 2))
    for row, length in enumerate(lengths):
        expected = hf_attention(reference, config, hidden[row:row + 1, :length])
        torch.testing.assert_close(out[row:row + 1, :length], expected, rtol=0, atol=ATOL)


@LAYOUTS
def test_decode_after_prefill_equals_hf_over_the_longer_sequence(kv_heads):
    """Rows at different positions: each decode step matches HF's last position over prompt + new tokens."""
    config, reference, ours = make_pair(kv_heads)
    lengths, steps = [5, 9], 3
    gen = torch.Generator().manual_seed(3)
    sequences = [torch.randn(1, n + steps, HIDDEN, generator=gen) for n in lengths]
    prompt = torch.zeros(2, max(lengths), HIDDEN)
    for row, n in enumerate(lengths):
        prompt[row, :n] = sequences[row][0, :n]
    cache = kv_cache(kv_heads, 2)
    prefill(ours, config, prompt, lengths, cache)
    for step in range(steps):
        positions = [n + step for n in lengths]
        token = torch.cat([sequences[row][:, p:p + 1] for row, p in enumerate(positions)])  # [B, 1, H]
        out = decode(ours, config, token, positions, cache)
        for row, p in enumerate(positions):
            expected = hf_attention(reference, config, sequences[row][:, :p + 1])[:, -1:]
            torch.testing.assert_close(out[row:row + 1], expected, rtol=0, atol=ATOL)


@torch.no_grad()
def test_decode_scales_scores_by_attention_multiplier_not_inverse_sqrt_head_dim():
    """Decode matches HF with attention_multiplier, and is far from HF with 1/sqrt(head_dim): a decode path using
    the Llama scale would fail the first comparison."""
    config, reference, ours = make_pair(kv_heads=2)
    length = 10
    hidden = torch.randn(1, length + 1, HIDDEN, generator=torch.Generator().manual_seed(4))
    cache = kv_cache(2, 1)
    prefill(ours, config, hidden[:, :length], [length], cache)
    out = decode(ours, config, hidden[:, length:], [length], cache)

    expected = hf_attention(reference, config, hidden)[:, -1:]
    torch.testing.assert_close(out, expected, rtol=0, atol=ATOL)

    llama_config = make_config(kv_heads=2, attention_multiplier=1 / math.sqrt(HEAD_DIM))
    llama_reference = hf.GraniteAttention(llama_config, layer_idx=0).eval()
    llama_reference.load_state_dict(reference.state_dict())
    wrong = hf_attention(llama_reference, llama_config, hidden)[:, -1:]
    assert (wrong - expected).abs().max() > 100 * ATOL


def test_attention_uses_attention_multiplier_as_its_scale():
    _, _, ours = make_pair(kv_heads=2)
    assert ours.scaling == ATTENTION_MULTIPLIER


# ----- one bf16/fp16 query on CPU: fp32 grouped products instead of the fused kernel ---------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("boolean_mask", [False, True])
def test_one_reduced_precision_query_matches_fp32_attention_to_its_dtypes_rounding(dtype, boolean_mask):
    gen = torch.Generator().manual_seed(0)
    q = (torch.randn(2, 8, 1, 16, generator=gen) * 2).to(dtype)
    k = (torch.randn(2, 2, 40, 16, generator=gen) * 2).to(dtype)
    v = torch.randn(2, 2, 40, 16, generator=gen).to(dtype)
    allowed = torch.ones(2, 1, 1, 40, dtype=torch.bool)
    allowed[0, ..., 25:] = False                                            # row 0 sees its first 25 positions
    additive = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, float("-inf"))
    expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=allowed,
                                                                scale=0.3, enable_gqa=True)
    out = grouped_attention(q, k, v, allowed if boolean_mask else additive, 0.3)
    assert out.shape == (2, 8, 1, 16) and out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=torch.finfo(dtype).eps * 4)
    assert torch.equal(out, one_query_attention(q, k, v, additive, 0.3))


def test_each_query_head_reads_the_kv_head_of_its_group():
    """Query head h reads KV head h // groups: with a constant v per KV head, that constant is the output."""
    q = torch.randn(1, 6, 1, 4).to(torch.bfloat16)
    k = torch.randn(1, 3, 5, 4).to(torch.bfloat16)
    v = torch.arange(3.0).view(1, 3, 1, 1).expand(1, 3, 5, 4).to(torch.bfloat16)
    out = one_query_attention(q, k, v, torch.zeros(1, 1, 1, 5, dtype=torch.bfloat16), 0.5)
    assert out[0, :, 0, 0].tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]


def test_fp32_prefill_and_causal_attention_keep_the_fused_kernel(monkeypatch):
    monkeypatch.setattr(attention_module, "one_query_attention", lambda *args: pytest.fail("took the one-query path"))
    q, k = torch.randn(1, 4, 1, 8), torch.randn(1, 2, 6, 8)
    mask = torch.zeros(1, 1, 1, 6)
    grouped_attention(q, k, k, mask, 0.5)                                                       # fp32
    grouped_attention(q.repeat(1, 1, 6, 1).bfloat16(), k.bfloat16(), k.bfloat16(), None, 0.5)  # causal prefill
