"""Neuron-style sliding-window Granite (`model_type` "granite_swa": IBM's "swash" dense models such as
granite-swash-2b), laid out like transformers' `modeling_granite_swa.py`: Granite's decoder layer (attention + gated
MLP, each branch scaled by `residual_multiplier`) whose attention has a per-layer kind (sliding window or full),
learned per-head sinks and a per-layer RoPE base (0 = NoPE), over a KV cache whose sliding layers are rings."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .backend.attention import HeadLayout
from .backend.checkpoint import convert_gated_mlp, convert_model
from .backend.decoder import head_plan
from .backend.mlp import GatedMLP
from .backend.norms import RMSNorm
from .backend.sliding_attention import SlidingWindowAttention
from .backend.step import DecodeStep
from .backend.window_decoder import NeuronGraniteSWABase, convert_window_attention
from .config import NeuronConfig


class GraniteSWADecoderLayer(nn.Module):
    def __init__(self, config, layout: HeadLayout, layer_idx: int, neuron_config: NeuronConfig):
        super().__init__()
        dtype = neuron_config.dtype
        self.layer_idx = layer_idx
        self.self_attn = SlidingWindowAttention(config, layout, layer_idx, dtype, fused_qkv=neuron_config.fused_qkv)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, dtype,
                            bool(getattr(config, "mlp_bias", False)))
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.residual_multiplier = float(config.residual_multiplier)

    def forward(self, hidden: torch.Tensor, step: DecodeStep) -> torch.Tensor:
        attn_out = self.self_attn(self.input_layernorm(hidden), step, step.cache)
        hidden = hidden + attn_out * self.residual_multiplier  # Granite: scaled attention branch
        step.record(self.layer_idx, "attention", hidden)
        hidden = hidden + self.mlp(self.post_attention_layernorm(hidden)) * self.residual_multiplier
        step.record(self.layer_idx, "mlp", hidden)
        return hidden


class NeuronGraniteSWAForCausalLM(NeuronGraniteSWABase):
    """One rank's shard of a sliding-window Granite causal LM with a windowed static KV cache."""

    def build_layer(self, config, layout, layer_idx, neuron_config):
        return GraniteSWADecoderLayer(config, layout, layer_idx, neuron_config)


def convert_hf_state_dict(hf: Mapping[str, torch.Tensor], config, rank: int, tp: int, dtype: torch.dtype,
                          fused_qkv: bool = True, ep: int = 1) -> dict[str, torch.Tensor]:
    """HF `GraniteSWAForCausalLM` tensors -> rank `rank` of `tp`'s state dict (sinks sharded with their heads)."""
    plan = head_plan(config, tp, ep)

    def convert_layer(src: str) -> dict[str, torch.Tensor]:
        attn = convert_window_attention(hf, f"{src}.self_attn", plan, rank, fused_qkv)
        out = {f"self_attn.{k}": v for k, v in attn.items()}
        out.update({f"mlp.{k}": v for k, v in convert_gated_mlp(hf, f"{src}.mlp", rank, tp).items()})
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"{norm}.weight"] = hf[f"{src}.{norm}.weight"]
        return out

    return convert_model(hf, config, rank, tp, dtype, convert_layer)
