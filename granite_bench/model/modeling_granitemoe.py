"""Neuron-style Granite MoE (`model_type` "granitemoe": Granite 3.0/3.1 MoE such as 1b-a400m and 3b-a800m), laid out
like transformers' `modeling_granitemoe.py`: a decoder layer of attention and a top-k routed `block_sparse_moe`,
each branch scaled by `residual_multiplier`, on the shared backend (experts sharded by intermediate slice, or by
expert with `moe_ep_degree`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .backend.attention import GraniteAttention, HeadLayout
from .backend.checkpoint import convert_attention, convert_model
from .backend.decoder import NeuronGraniteBase, head_plan
from .backend.moe import GraniteMoE, convert_moe
from .backend.norms import RMSNorm
from .backend.step import DecodeStep
from .config import NeuronConfig


class GraniteMoeDecoderLayer(nn.Module):
    def __init__(self, config, layout: HeadLayout, layer_idx: int, neuron_config: NeuronConfig):
        super().__init__()
        dtype = neuron_config.dtype
        self.layer_idx = layer_idx
        self.self_attn = GraniteAttention(config, layout, layer_idx, dtype, fused_qkv=neuron_config.fused_qkv)
        self.block_sparse_moe = GraniteMoE(config, dtype, neuron_config.moe_ep_degree)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.residual_multiplier = float(config.residual_multiplier)

    def forward(self, hidden: torch.Tensor, step: DecodeStep) -> torch.Tensor:
        attn_out = self.self_attn(self.input_layernorm(hidden), step, step.cache)
        hidden = hidden + attn_out * self.residual_multiplier  # Granite: scaled attention branch
        step.record(self.layer_idx, "attention", hidden)
        moe_out = self.block_sparse_moe(self.post_attention_layernorm(hidden), step, self.layer_idx)
        hidden = hidden + moe_out * self.residual_multiplier  # Granite: scaled MoE branch
        step.record(self.layer_idx, "mlp", hidden)
        return hidden


class NeuronGraniteMoeForCausalLM(NeuronGraniteBase):
    """One rank's shard of a Granite MoE causal LM with a static KV cache."""

    def build_layer(self, config, layout, layer_idx, neuron_config):
        return GraniteMoeDecoderLayer(config, layout, layer_idx, neuron_config)


def convert_hf_state_dict(hf: Mapping[str, torch.Tensor], config, rank: int, tp: int, dtype: torch.dtype,
                          fused_qkv: bool = True, ep: int = 1) -> dict[str, torch.Tensor]:
    """HF `GraniteMoeForCausalLM` tensors (either expert layout) -> rank `rank` of `tp`'s state dict."""
    plan = head_plan(config, tp, ep)

    def convert_layer(src: str) -> dict[str, torch.Tensor]:
        out = {f"self_attn.{k}": v for k, v in convert_attention(hf, f"{src}.self_attn", plan, rank, fused_qkv).items()}
        out.update({f"block_sparse_moe.{k}": v
                    for k, v in convert_moe(hf, f"{src}.block_sparse_moe", rank, tp, ep).items()})
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"{norm}.weight"] = hf[f"{src}.{norm}.weight"]
        return out

    return convert_model(hf, config, rank, tp, dtype, convert_layer)
