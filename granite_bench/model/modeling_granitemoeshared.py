"""Neuron-style Granite MoE with a shared MLP (`model_type` "granitemoeshared"), laid out like transformers'
`modeling_granitemoeshared.py`: attention, then the routed experts plus a shared gated MLP on the same normed input
(`shared_intermediate_size` 0 = no shared MLP), the sum scaled by `residual_multiplier`."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .backend.attention import GraniteAttention, HeadLayout
from .backend.checkpoint import convert_attention, convert_fused_gated_mlp, convert_model
from .backend.decoder import NeuronGraniteBase, head_plan
from .backend.mlp import GatedMLP
from .backend.moe import GraniteMoE, convert_moe
from .backend.norms import RMSNorm
from .backend.step import DecodeStep
from .config import NeuronConfig


class GraniteMoeSharedDecoderLayer(nn.Module):
    def __init__(self, config, layout: HeadLayout, layer_idx: int, neuron_config: NeuronConfig):
        super().__init__()
        dtype = neuron_config.dtype
        self.layer_idx = layer_idx
        self.self_attn = GraniteAttention(config, layout, layer_idx, dtype, fused_qkv=neuron_config.fused_qkv)
        self.block_sparse_moe = GraniteMoE(config, dtype, neuron_config.moe_ep_degree)
        shared = int(getattr(config, "shared_intermediate_size", 0) or 0)
        self.shared_mlp = GatedMLP(config.hidden_size, shared, dtype) if shared else None
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.residual_multiplier = float(config.residual_multiplier)

    def forward(self, hidden: torch.Tensor, step: DecodeStep) -> torch.Tensor:
        attn_out = self.self_attn(self.input_layernorm(hidden), step, step.cache)
        hidden = hidden + attn_out * self.residual_multiplier  # Granite: scaled attention branch
        step.record(self.layer_idx, "attention", hidden)
        normed = self.post_attention_layernorm(hidden)
        moe_out = self.block_sparse_moe(normed, step, self.layer_idx)
        if self.shared_mlp is not None:
            shared_out = self.shared_mlp(normed)
            step.record(self.layer_idx, "shared_mlp", shared_out)
            moe_out = moe_out + shared_out
        hidden = hidden + moe_out * self.residual_multiplier  # Granite: scaled experts + shared branch
        step.record(self.layer_idx, "mlp", hidden)
        return hidden


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
        out = {f"self_attn.{k}": v for k, v in convert_attention(hf, f"{src}.self_attn", plan, rank, fused_qkv).items()}
        out.update({f"block_sparse_moe.{k}": v
                    for k, v in convert_moe(hf, f"{src}.block_sparse_moe", rank, tp, ep).items()})
        if shared:
            out.update({f"shared_mlp.{k}": v
                        for k, v in convert_fused_gated_mlp(hf, f"{src}.shared_mlp", rank, tp).items()})
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"{norm}.weight"] = hf[f"{src}.{norm}.weight"]
        return out

    return convert_model(hf, config, rank, tp, dtype, convert_layer)
