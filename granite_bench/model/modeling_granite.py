"""Neuron-style dense Granite (`model_type` "granite": Granite 3.x, 4.1), laid out like transformers'
`modeling_granite.py`: decoder layer (attention + gated MLP, each branch scaled by `residual_multiplier`) and the
causal LM, on the shared backend. The state-dict conversion fuses Q/K/V per rank and shards the MLP."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .backend.attention import GraniteAttention, HeadLayout
from .backend.checkpoint import convert_attention, convert_gated_mlp, convert_model
from .backend.decoder import NeuronGraniteBase, head_plan
from .backend.mlp import GatedMLP
from .backend.norms import RMSNorm
from .backend.step import DecodeStep
from .config import NeuronConfig


class GraniteDecoderLayer(nn.Module):
    def __init__(self, config, layout: HeadLayout, layer_idx: int, neuron_config: NeuronConfig):
        super().__init__()
        dtype = neuron_config.dtype
        self.layer_idx = layer_idx
        self.self_attn = GraniteAttention(config, layout, layer_idx, dtype, fused_qkv=neuron_config.fused_qkv)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, dtype, bool(getattr(config, "mlp_bias", False)))
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.residual_multiplier = float(config.residual_multiplier)

    def forward(self, hidden: torch.Tensor, step: DecodeStep) -> torch.Tensor:
        attn_out = self.self_attn(self.input_layernorm(hidden), step, step.cache)
        hidden = hidden + attn_out * self.residual_multiplier  # Granite: scaled attention branch
        step.record(self.layer_idx, "attention", hidden)
        mlp_out = self.mlp(self.post_attention_layernorm(hidden))
        hidden = hidden + mlp_out * self.residual_multiplier  # Granite: scaled MLP branch
        step.record(self.layer_idx, "mlp", hidden)
        return hidden


class NeuronGraniteForCausalLM(NeuronGraniteBase):
    """One rank's shard of a dense Granite causal LM with a static KV cache."""

    def build_layer(self, config, layout, layer_idx, neuron_config):
        return GraniteDecoderLayer(config, layout, layer_idx, neuron_config)


def convert_hf_state_dict(hf: Mapping[str, torch.Tensor], config, rank: int, tp: int, dtype: torch.dtype,
                          fused_qkv: bool = True, ep: int = 1) -> dict[str, torch.Tensor]:
    """HF `GraniteForCausalLM` tensors -> rank `rank` of `tp`'s state dict for `NeuronGraniteForCausalLM`."""
    plan = head_plan(config, tp, ep)

    def convert_layer(src: str) -> dict[str, torch.Tensor]:
        out = {f"self_attn.{k}": v for k, v in convert_attention(hf, f"{src}.self_attn", plan, rank, fused_qkv).items()}
        out.update({f"mlp.{k}": v for k, v in convert_gated_mlp(hf, f"{src}.mlp", rank, tp).items()})
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"{norm}.weight"] = hf[f"{src}.{norm}.weight"]
        return out

    return convert_model(hf, config, rank, tp, dtype, convert_layer)
