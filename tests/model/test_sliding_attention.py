"""SlidingWindowAttention (context encoding in query blocks, token generation over a ring of W slots) against HF's
own eager `GraniteSWAAttention` on the same random weights and sinks: sliding and full layers, a NoPE layer, decode
across several wraps of the ring, and right-padded rows of different lengths."""

import math
from unittest import mock

import pytest
import torch
from transformers import GraniteSWAConfig
from transformers.models.granite_swa import modeling_granite_swa as hf

from granite_bench.model.backend import sliding_attention
from granite_bench.model.backend.attention import HeadLayout
from granite_bench.model.backend.sliding_attention import PerThetaRotary, SlidingWindowAttention, sink_attention
from granite_bench.model.backend.step import DecodeStep
from granite_bench.model.backend.window_cache import WindowedKVCache, held_positions

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, WINDOW, SEQ = 64, 4, 2, 16, 8, 96
THETAS = [10000.0, 0.0, 500.0]          # layer 1 is NoPE
KINDS = ["sliding_attention", "sliding_attention", "full_attention"]
ATOL = 3e-5


def make_config() -> GraniteSWAConfig:
    config = GraniteSWAConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                              num_hidden_layers=3, attention_multiplier=0.0625, sliding_window=WINDOW,
                              layer_types=KINDS, layer_rope_theta=THETAS, max_position_embeddings=4096,
                              vocab_size=64, bos_token_id=1, eos_token_id=2)
    config._attn_implementation = "eager"
    return config


@torch.no_grad()
def make_pair(layer: int, seed: int = 0):
    """HF's attention of `layer` with random weights and sinks, and ours holding the same."""
    config = make_config()
    reference = hf.GraniteSWAAttention(config, layer_idx=layer).eval()
    gen = torch.Generator().manual_seed(seed)
    for name, linear in (("q", reference.q_proj), ("k", reference.k_proj), ("v", reference.v_proj),
                         ("o", reference.o_proj)):
        gain = 2.0 if name in "qk" else 1.0
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=gen) * gain / math.sqrt(linear.in_features))
    reference.sinks.copy_(torch.randn(HEADS, generator=gen) * 2 + 1)   # some sinks dominate, some do not
    ours = SlidingWindowAttention(config, HeadLayout(HEADS, KV_HEADS, HEAD_DIM), layer, torch.float32).eval()
    ours.qkv_proj.weight.copy_(torch.cat([reference.q_proj.weight, reference.k_proj.weight,
                                          reference.v_proj.weight]))
    ours.o_proj.weight.copy_(reference.o_proj.weight)
    ours.sinks.copy_(reference.sinks)
    return config, reference, ours


def hf_mask(length: int, window: int | None) -> torch.Tensor:
    """HF's additive mask: causal, and kv > q - window on a sliding layer (masking_utils' sliding overlay)."""
    q, kv = torch.arange(length)[:, None], torch.arange(length)[None, :]
    ok = (kv <= q) & ((kv > q - window) if window else torch.ones_like(kv, dtype=torch.bool))
    return torch.zeros(length, length).masked_fill(~ok, torch.finfo(torch.float32).min)[None, None]


@torch.no_grad()
def hf_attention(reference, config, layer: int, hidden: torch.Tensor) -> torch.Tensor:
    """HF eager attention over one unpadded sequence: [1, L, H]."""
    theta = THETAS[layer]
    embeddings = None
    if theta:
        config_theta = make_config()
        config_theta.rope_parameters = {**config.rope_parameters, "rope_theta": theta}
        embeddings = hf.GraniteSWARotaryEmbedding(config_theta)(hidden, torch.arange(hidden.shape[1])[None])
    window = WINDOW if KINDS[layer] == "sliding_attention" else None
    return reference(hidden, embeddings, hf_mask(hidden.shape[1], window))[0]


def new_cache(batch: int, config) -> WindowedKVCache:
    return WindowedKVCache(KINDS, WINDOW, batch, KV_HEADS, SEQ, HEAD_DIM, torch.float32)


@pytest.mark.parametrize("layer", [0, 1, 2], ids=["sliding", "sliding-nope", "full"])
@pytest.mark.parametrize("block", [7, 256])
def test_context_encoding_matches_hf_over_a_prompt_many_windows_long(monkeypatch, layer, block):
    """block 7 < W: each query block reaches back into the keys of earlier blocks."""
    monkeypatch.setattr(sliding_attention, "QUERY_BLOCK", block)
    config, reference, ours = make_pair(layer)
    hidden = torch.randn(1, 50, HIDDEN, generator=torch.Generator().manual_seed(1))
    rotary = PerThetaRotary(HEAD_DIM, SEQ, config)
    cos, sin = rotary(torch.arange(50)[None])
    with torch.no_grad():
        out = ours(hidden, DecodeStep(cos, sin, None, cache=new_cache(1, config)), new_cache(1, config))
    torch.testing.assert_close(out, hf_attention(reference, config, layer, hidden), atol=ATOL, rtol=0)


@pytest.mark.parametrize("layer", [0, 1, 2], ids=["sliding", "sliding-nope", "full"])
def test_token_generation_across_ring_wraps_matches_hf_for_right_padded_rows(layer):
    """Two rows, prompts of 13 and 5 tokens in a 16-token bucket (one longer than W, one shorter), then 30 decode
    steps each: the ring wraps several times, and every step equals HF's attention at that position."""
    config, reference, ours = make_pair(layer)
    steps, lengths, bucket = 30, [13, 5], 16
    gen = torch.Generator().manual_seed(2)
    sequences = [torch.randn(1, n + steps, HIDDEN, generator=gen) for n in lengths]
    expected = [hf_attention(reference, config, layer, seq) for seq in sequences]
    rotary = PerThetaRotary(HEAD_DIM, SEQ, config)
    cache = new_cache(2, config)
    prompt = torch.zeros(2, bucket, HIDDEN)
    for row, n in enumerate(lengths):
        prompt[row, :n] = sequences[row][0, :n]
    attention_mask = (torch.arange(bucket)[None] < torch.tensor(lengths)[:, None]).long()
    cos, sin = rotary(torch.arange(bucket).expand(2, bucket))
    with torch.no_grad():
        out = ours(prompt, DecodeStep(cos, sin, None, attention_mask=attention_mask, cache=cache), cache)
        for row, n in enumerate(lengths):
            torch.testing.assert_close(out[row, :n], expected[row][0, :n], atol=ATOL, rtol=0)
        for t in range(steps):
            positions = torch.tensor(lengths) + t
            token = torch.stack([sequences[row][0, n + t] for row, n in enumerate(lengths)])[:, None]
            cos, sin = rotary(positions[:, None])
            out = ours(token, DecodeStep(cos, sin, None, positions, kv_len=64, cache=cache), cache)
            for row, n in enumerate(lengths):
                torch.testing.assert_close(out[row, 0], expected[row][0, n + t], atol=ATOL, rtol=0)


@pytest.mark.parametrize("length", [4096, 32768, 131072])
def test_sliding_layer_cache_is_a_ring_of_w_slots_whatever_the_sequence_length(length):
    per_slot = 2 * KV_HEADS * HEAD_DIM * 2          # K and V, bf16, batch 1
    cache = WindowedKVCache(KINDS, WINDOW, 1, KV_HEADS, length, HEAD_DIM, torch.bfloat16)
    kinds = cache.kv_bytes_per_layer_kind()
    assert kinds["sliding_attention"] == {"layers": 2, "slots": WINDOW, "bytes_per_slot": per_slot,
                                          "bytes": 2 * WINDOW * per_slot}
    assert kinds["full_attention"] == {"layers": 1, "slots": length, "bytes_per_slot": per_slot,
                                       "bytes": length * per_slot}
    assert cache.caches(0)[0].shape[2] == WINDOW and cache.caches(2)[0].shape[2] == length


def test_held_positions_of_a_ring_are_the_last_w_positions_and_empty_slots_before_the_first_wrap():
    held = held_positions(torch.tensor([2, 7, 8, 21]), 8, 8)
    assert held[0].tolist() == [0, 1, 2, -1, -1, -1, -1, -1]
    assert held[1].tolist() == list(range(8))
    assert held[2].tolist() == [8, 1, 2, 3, 4, 5, 6, 7]
    assert sorted(held[3].tolist()) == list(range(14, 22)) and held[3][21 % 8] == 21
    assert held_positions(torch.tensor([3]), 6, None)[0].tolist() == [0, 1, 2, 3, -1, -1]


def test_sink_is_one_extra_logit_in_the_softmax_denominator():
    """softmax(s)·V·sigmoid(lse(s) - sink) == softmax over [s, sink] with a zero value for the sink."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=gen) for _ in range(3))
    sinks = torch.tensor([0.5, 3.0])
    allowed = torch.ones(1, 1, 5, 5, dtype=torch.bool).tril()
    scores = (q @ k.transpose(-1, -2) * 0.7).masked_fill(~allowed, float("-inf"))
    extra = torch.cat([scores, sinks.view(1, 2, 1, 1).expand(1, 2, 5, 1)], dim=-1).softmax(-1)
    expected = extra[..., :5] @ v
    torch.testing.assert_close(sink_attention(q, k, v, allowed, 0.7, sinks), expected, atol=1e-6, rtol=0)
    without = sink_attention(q, k, v, allowed, 0.7, None)
    assert (without - expected).abs().max() > 0.05   # the sinks matter at these values


def test_decode_attention_in_the_caches_dtype_is_the_same_ops_in_fp32_and_never_upcasts_a_bf16_cache():
    """Token generation (upcast off) runs the two matmuls in the cache's dtype: in fp32 bitwise the same as the
    upcast path; in bf16 it returns bf16 close to the fp32 result, without an fp32 copy of K or V."""
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(2, 8, 1, 16, generator=gen)
    k, v = (torch.randn(2, 2, 40, 16, generator=gen) for _ in range(2))
    sinks = torch.randn(8, generator=gen)
    allowed = torch.rand(2, 1, 1, 40, generator=gen) > 0.3
    exact = sink_attention(q, k, v, allowed, 0.25, sinks)
    assert torch.equal(sink_attention(q, k, v, allowed, 0.25, sinks, upcast=False), exact)
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    upcasts = []
    real_float = torch.Tensor.float
    with mock.patch.object(torch.Tensor, "float", lambda t: upcasts.append(tuple(t.shape)) or real_float(t)):
        fast = sink_attention(qb, kb, vb, allowed, 0.25, sinks.bfloat16(), upcast=False)
    assert fast.dtype == torch.bfloat16 and (2, 2, 40, 16) not in upcasts   # only scores / outputs upcast
    assert sink_attention(qb, kb, vb, allowed, 0.25, sinks.bfloat16()).dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), exact, atol=0.03, rtol=0.03)


def test_one_decode_mask_per_layer_kind_is_each_of_its_layers_own_mask():
    """The model builds token generation's masks once per step, one per layer kind: equal to what each layer's own
    (ring or full) slots and window give, before and after the ring wraps."""
    cache = WindowedKVCache(KINDS, WINDOW, 2, KV_HEADS, SEQ, HEAD_DIM, torch.float32)
    for positions in (torch.tensor([3, 5]), torch.tensor([20, 9]), torch.tensor([40, 63])):
        masks = cache.decode_masks(positions, 64)
        assert set(masks) == {"sliding_attention", "full_attention"}
        for layer, kind in enumerate(KINDS):
            window = WINDOW if kind == "sliding_attention" else None
            assert torch.equal(masks[kind], cache.allowed(layer, positions, 64, window))
        assert masks["sliding_attention"].shape == (2, 1, 1, WINDOW)
        assert masks["full_attention"].shape == (2, 1, 1, 64)
