"""Neuron-style Granite MoE with a shared MLP (`model_type` "granitemoeshared"), laid out like transformers'
`modeling_granitemoeshared.py`: attention, then the routed experts plus a shared gated MLP on the same normed input
(`shared_intermediate_size` 0 = no shared MLP), the sum scaled by `residual_multiplier`."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .backend.checkpoint import convert_attention_and_norms, convert_model
from .backend.decoder import NeuronGraniteBase, head_plan
from .backend.moe import ExpertsAndSharedMLPLayer, convert_experts_and_shared_mlp


class GraniteMoeSharedDecoderLayer(ExpertsAndSharedMLPLayer):
    """Attention, then the routed experts plus the shared MLP (backend.moe.ExpertsAndSharedMLPLayer)."""


class NeuronGraniteMoeSharedForCausalLM(NeuronGraniteBase):
    """One rank's shard of a Granite MoE-with-shared-MLP causal LM with a static KV cache."""

    def build_layer(self, config, layout, layer_idx, neuron_config):
        return GraniteMoeSharedDecoderLayer(config, layout, layer_idx, neuron_config)


def convert_hf_state_dict(hf: Mapping[str, torch.Tensor], config, rank: int, tp: int, dtype: torch.dtype,
                          fused_qkv: bool = True, ep: int = 1) -> dict[str, torch.Tensor]:
    """HF `GraniteMoeSharedForCausalLM` tensors (either expert layout) -> rank `rank` of `tp`'s state dict."""
    plan = head_plan(config, tp, ep)

    def convert_layer(src: str) -> dict[str, torch.Tensor]:
        out = convert_attention_and_norms(hf, src, plan, rank, fused_qkv)
        out.update(convert_experts_and_shared_mlp(hf, src, config, rank, tp, ep))
        return out

    return convert_model(hf, config, rank, tp, dtype, convert_layer)
