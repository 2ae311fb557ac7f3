"""Seeded bugs: plausible porting mistakes, each patched into the implementation where it keeps that concern.

Each bug is a context manager factory: `with SEEDED_BUGS["rope_interleaved"].patch(): ...` runs the model code
with the mistake in place and restores it afterwards. The bug matrix (`bug_matrix.py`) and the tests use them to
show that the canary's tasks catch each class of mistake by *accuracy*, not only by log-likelihood gaps.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable
from unittest import mock

import torch

from ..model import modeling_granite
from ..model.backend import attention, decoder, kv_cache, mlp, moe, norms, rope


@dataclass(frozen=True)
class SeededBug:
    name: str
    bug_class: str           # attention scale, multipliers, RoPE, GQA mapping, KV cache position, stale cache, ...
    description: str
    in_context_encoding: bool   # False: only token generation (the decode path) is wrong
    patch: Callable[[], contextlib.AbstractContextManager]


# -- attention scale ------------------------------------------------------------------------------------------------

def sqrt_head_dim_scale():
    """q·k scaled by 1/sqrt(head_dim) (Llama) instead of Granite's attention_multiplier."""
    def prefill(self, q, k, v, mask):
        return attention.grouped_attention(q, k, v, mask, self.layout.head_dim ** -0.5)

    def decode(self, q, k_cache, v_cache, mask):
        return attention.grouped_attention(q, k_cache, v_cache, mask, self.layout.head_dim ** -0.5)

    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(attention.GraniteAttention, "prefill_attention", prefill))
    stack.enter_context(mock.patch.object(attention.GraniteAttention, "decode_attention", decode))
    return stack


# -- multipliers ----------------------------------------------------------------------------------------------------

def embedding_multiplier_dropped():
    """The embedding output is not multiplied by embedding_multiplier (Llama's embedding)."""
    def forward(self, input_ids):
        return super(decoder.GraniteEmbedding, self).forward(input_ids)

    return mock.patch.object(decoder.GraniteEmbedding, "forward", forward)


def residual_multiplier_dropped_in_first_layer():
    """Layer 0 adds its attention and MLP branches unscaled (residual_multiplier 1 there, as in Llama)."""
    original = modeling_granite.GraniteDecoderLayer.forward

    def forward(self, *args, **kwargs):
        if self.self_attn.layer_idx != 0:
            return original(self, *args, **kwargs)
        kept, self.residual_multiplier = self.residual_multiplier, 1.0
        try:
            return original(self, *args, **kwargs)
        finally:
            self.residual_multiplier = kept

    return mock.patch.object(modeling_granite.GraniteDecoderLayer, "forward", forward)


def logits_scaling_applied_twice():
    """Logits divided by logits_scaling twice (once in the head, once more by the caller)."""
    original = decoder.GraniteHead.forward

    def forward(self, hidden):
        return original(self, hidden) / self.logits_scaling

    return mock.patch.object(decoder.GraniteHead, "forward", forward)


# -- RoPE -----------------------------------------------------------------------------------------------------------

def rope_interleaved():
    """RoPE rotating adjacent pairs (GPT-J layout) on tables built for halves (GPT-NeoX/HF layout)."""
    def rotate_pairs(x):
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((-x2, x1), dim=-1).flatten(-2)

    return mock.patch.object(rope, "rotate_half", rotate_pairs)


def decode_rope_position_off_by_one():
    """Token generation rotates q/k for position p + 1: the new token looks one step further away."""
    original = rope.RotaryEmbedding.forward

    def forward(self, position_ids):
        if position_ids.shape[-1] == 1:  # the decode step
            position_ids = position_ids + 1
        return original(self, position_ids)

    return mock.patch.object(rope.RotaryEmbedding, "forward", forward)


# -- GQA mapping ----------------------------------------------------------------------------------------------------

def gqa_heads_mapped_round_robin():
    """Query head h reads KV head h % n_kv (k/v tiled with .repeat) instead of h // group (repeat_interleave)."""
    def grouped(q, k, v, mask, scaling):
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat(1, groups, 1, 1), v.repeat(1, groups, 1, 1)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling)

    return mock.patch.object(attention, "grouped_attention", grouped)


# -- KV cache -------------------------------------------------------------------------------------------------------

def kv_cache_written_one_slot_early():
    """Token generation writes its k/v at position p - 1, over the previous token's."""
    original = kv_cache.KVCacheManager.update_token_generation

    def update(self, layer_idx, k, v, positions):
        return original(self, layer_idx, k, v, (positions - 1).clamp(min=0))

    return mock.patch.object(kv_cache.KVCacheManager, "update_token_generation", update)


def kv_cache_stale_after_context_encoding():
    """Context encoding does not write the cache: token generation attends over k/v left by earlier requests."""
    return mock.patch.object(kv_cache.KVCacheManager, "update_context_encoding",
                             lambda self, layer_idx, k, v: None)


# -- norm eps -------------------------------------------------------------------------------------------------------

def rms_norm_eps_outside_sqrt():
    """RMSNorm as x / (sqrt(mean x²) + eps) with eps 1e-2 (a default from another model) instead of
    x · rsqrt(mean x² + rms_norm_eps)."""
    def forward(self, x):
        x32 = x.float()
        x32 = x32 / (x32.pow(2).mean(-1, keepdim=True).sqrt() + 1e-2)
        return self.weight * x32.to(x.dtype)

    return mock.patch.object(norms.RMSNorm, "forward", forward)


SEEDED_BUGS: dict[str, SeededBug] = {bug.name: bug for bug in [
    SeededBug("sqrt_head_dim_scale", "attention scale", sqrt_head_dim_scale.__doc__, True, sqrt_head_dim_scale),
    SeededBug("embedding_multiplier_dropped", "multipliers", embedding_multiplier_dropped.__doc__, True,
              embedding_multiplier_dropped),
    SeededBug("residual_multiplier_dropped_in_first_layer", "multipliers",
              residual_multiplier_dropped_in_first_layer.__doc__, True, residual_multiplier_dropped_in_first_layer),
    SeededBug("logits_scaling_applied_twice", "logits scaling", logits_scaling_applied_twice.__doc__, True,
              logits_scaling_applied_twice),
    SeededBug("rope_interleaved", "RoPE", rope_interleaved.__doc__, True, rope_interleaved),
    SeededBug("decode_rope_position_off_by_one", "RoPE", decode_rope_position_off_by_one.__doc__, False,
              decode_rope_position_off_by_one),
    SeededBug("gqa_heads_mapped_round_robin", "GQA mapping", gqa_heads_mapped_round_robin.__doc__, True,
              gqa_heads_mapped_round_robin),
    SeededBug("kv_cache_written_one_slot_early", "KV cache position", kv_cache_written_one_slot_early.__doc__,
              False, kv_cache_written_one_slot_early),
    SeededBug("kv_cache_stale_after_context_encoding", "stale cache",
              kv_cache_stale_after_context_encoding.__doc__, False, kv_cache_stale_after_context_encoding),
    SeededBug("rms_norm_eps_outside_sqrt", "norm eps", rms_norm_eps_outside_sqrt.__doc__, True,
              rms_norm_eps_outside_sqrt),
]}


# -- mixture of experts (Granite MoE models only: the dense canary has no router) ---------------------------------

def router_softmax_over_all_experts():
    """Softmax over all experts' logits before the top-k, the chosen k keeping their share of it (Switch style):
    HF renormalises over the k chosen."""
    def forward(self, x):
        probs = torch.softmax(torch.nn.functional.linear(x, self.weight).float(), dim=-1)
        weights, index = probs.topk(self.top_k, dim=-1)
        return weights.to(x.dtype), index

    return mock.patch.object(moe.TopKRouter, "forward", forward)


def router_weights_unnormalised():
    """The k chosen router logits used as the experts' weights, the softmax over them dropped."""
    def forward(self, x):
        logits, index = torch.nn.functional.linear(x, self.weight).float().topk(self.top_k, dim=-1)
        return logits.to(x.dtype), index

    return mock.patch.object(moe.TopKRouter, "forward", forward)


def router_top_k_off_by_one():
    """num_experts_per_tok - 1 experts per token (a top-k bound off by one)."""
    original = moe.TopKRouter.forward

    def forward(self, x):
        kept, self.top_k = self.top_k, max(self.top_k - 1, 1)
        try:
            return original(self, x)
        finally:
            self.top_k = kept

    return mock.patch.object(moe.TopKRouter, "forward", forward)


def experts_gate_up_swapped():
    """The fused input_linear read as [up; gate] instead of [gate; up]: silu lands on the up projection."""
    def expert(self, local, x):
        up, gate = moe.linear(x, self.gate_up_proj[local]).chunk(2, dim=-1)
        return moe.linear(torch.nn.functional.silu(gate) * up, self.down_proj[local])

    return mock.patch.object(moe.FusedExperts, "expert", expert)


def shared_mlp_dropped():
    """The shared MLP's output never added beside the experts' (its gated MLP returns zeros)."""
    return mock.patch.object(mlp.GatedMLP, "forward", lambda self, x: torch.zeros_like(x))


@dataclass(frozen=True)
class MoESeededBug:
    name: str
    description: str
    sub_block: str           # where localisation must name it (in the first MoE layer)
    patch: Callable[[], contextlib.AbstractContextManager]


MOE_SEEDED_BUGS: dict[str, MoESeededBug] = {bug.name: bug for bug in [
    MoESeededBug("router_softmax_over_all_experts", router_softmax_over_all_experts.__doc__, "router",
                 router_softmax_over_all_experts),
    MoESeededBug("router_weights_unnormalised", router_weights_unnormalised.__doc__, "router",
                 router_weights_unnormalised),
    MoESeededBug("router_top_k_off_by_one", router_top_k_off_by_one.__doc__, "router", router_top_k_off_by_one),
    MoESeededBug("experts_gate_up_swapped", experts_gate_up_swapped.__doc__, "experts", experts_gate_up_swapped),
    MoESeededBug("shared_mlp_dropped", shared_mlp_dropped.__doc__, "shared_mlp", shared_mlp_dropped),
]}
