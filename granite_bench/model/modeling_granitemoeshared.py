"""Neuron-style Granite MoE with a shared MLP (`model_type` "granitemoeshared"), laid out like transformers'
`modeling_granitemoeshared.py`: attention, then the routed experts plus a shared gated MLP on the same normed input
(`shared_intermediate_size` 0 = no shared MLP), the sum scaled by `residual_multiplier`."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .backend.attention import HeadLayout
from .backend.checkpoint import convert_attention_and_norms, convert_fused_gated_mlp, convert_model
from .backend.decoder import GraniteDecoderLayerBase, NeuronGraniteBase, head_plan
from .backend.mlp import GatedMLP
from .backend.moe import GraniteMoE, convert_moe, experts_plus_shared
from .backend.step import DecodeStep
from .config import NeuronConfig


class GraniteMoeSharedDecoderLayer(GraniteDecoderLayerBase):
    def __init__(self, config, layout: HeadLayout, layer_idx: int, neuron_config: NeuronConfig):
        super().__init__(config, layout, layer_idx, neuron_config)
        self.block_sparse_moe = GraniteMoE(config, neuron_config.dtype, neuron_config.moe_ep_degree)
        shared = int(getattr(config, "shared_intermediate_size", 0) or 0)
        self.shared_mlp = GatedMLP(config.hidden_size, shared, neuron_config.dtype) if shared else None

    def feed_forward(self, normed: torch.Tensor, step: DecodeStep) -> torch.Tensor:
        return experts_plus_shared(self.block_sparse_moe, self.shared_mlp, normed, step, self.layer_idx)


class NeuronGraniteMoeSharedForCausalLM(NeuronGraniteBase):
    """One rank's shard of a Granite MoE-with-shared-MLP causal LM with a static KV cache."""

    def build_layer(self, config, layout, layer_idx, neuron_config):
        return GraniteMoeSharedDecoderLayer(config, layout, layer_idx, neuron_config)


def convert_hf_state_dict(hf: Mapping[str, torch.Tensor], config, rank: int, tp: int, dtype: torch.dtype,
                          fused_qkv: bool = True, ep: int = 1) -> dict[str, torch.Tensor]:
    """HF `GraniteMoeSharedForCausalLM` tensors (either expert layout) -> rank `rank` of `tp`'s state dict."""
    plan = head_plan(config, tp, ep)
    shared = int(getattr(config, "shared_intermediate_size", 0) or 0)

    def convert_layer(src: str) -> dict[str, torch.Tensor]:
        out = convert_attention_and_norms(hf, src, plan, rank, fused_qkv)
        out.update({f"block_sparse_moe.{k}": v
                    for k, v in convert_moe(hf, f"{src}.block_sparse_moe", rank, tp, ep).items()})
        if shared:
            out.update({f"shared_mlp.{k}": v
                        for k, v in convert_fused_gated_mlp(hf, f"{src}.shared_mlp", rank, tp).items()})
        return out

    return convert_model(hf, config, rank, tp, dtype, convert_layer)
