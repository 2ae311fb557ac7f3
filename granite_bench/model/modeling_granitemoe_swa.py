"""Neuron-style sliding-window Granite MoE (`model_type` "granitemoe_swa": IBM's "swash" MoE models such as
granite-swash-3b-a600m), laid out like transformers' `modeling_granitemoe_swa.py`: Granite MoE-shared's decoder
layer (top-k routed experts plus an optional shared MLP, `shared_intermediate_size` 0 = none) whose attention has a
per-layer kind (sliding window or full), learned per-head sinks and a per-layer RoPE base (0 = NoPE)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .backend.attention import HeadLayout
from .backend.checkpoint import convert_fused_gated_mlp, convert_model
from .backend.decoder import head_plan
from .backend.mlp import GatedMLP
from .backend.moe import GraniteMoE, convert_moe
from .backend.norms import RMSNorm
from .backend.sliding_attention import SlidingWindowAttention
from .backend.step import DecodeStep
from .backend.window_decoder import NeuronGraniteSWABase, convert_window_attention
from .config import NeuronConfig


class GraniteMoeSWADecoderLayer(nn.Module):
    def __init__(self, config, layout: HeadLayout, layer_idx: int, neuron_config: NeuronConfig):
        super().__init__()
        dtype = neuron_config.dtype
        self.layer_idx = layer_idx
        self.self_attn = SlidingWindowAttention(config, layout, layer_idx, dtype, fused_qkv=neuron_config.fused_qkv)
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
        branch = self.block_sparse_moe(normed, step, self.layer_idx)
        if self.shared_mlp is not None:
            shared_out = self.shared_mlp(normed)
            step.record(self.layer_idx, "shared_mlp", shared_out)
            branch = branch + shared_out
        hidden = hidden + branch * self.residual_multiplier  # Granite: scaled experts (+ shared) branch
        step.record(self.layer_idx, "mlp", hidden)
        return hidden


class NeuronGraniteMoeSWAForCausalLM(NeuronGraniteSWABase):
    """One rank's shard of a sliding-window Granite MoE causal LM with a windowed static KV cache."""

    def build_layer(self, config, layout, layer_idx, neuron_config):
        return GraniteMoeSWADecoderLayer(config, layout, layer_idx, neuron_config)


def convert_hf_state_dict(hf: Mapping[str, torch.Tensor], config, rank: int, tp: int, dtype: torch.dtype,
                          fused_qkv: bool = True, ep: int = 1) -> dict[str, torch.Tensor]:
    """HF `GraniteMoeSWAForCausalLM` tensors (either expert layout) -> rank `rank` of `tp`'s state dict."""
    plan = head_plan(config, tp, ep)
    shared = int(getattr(config, "shared_intermediate_size", 0) or 0)

    def convert_layer(src: str) -> dict[str, torch.Tensor]:
        attn = convert_window_attention(hf, f"{src}.self_attn", plan, rank, fused_qkv)
        out = {f"self_attn.{k}": v for k, v in attn.items()}
        out.update({f"block_sparse_moe.{k}": v
                    for k, v in convert_moe(hf, f"{src}.block_sparse_moe", rank, tp, ep).items()})
        if shared:
            out.update({f"shared_mlp.{k}": v
                        for k, v in convert_fused_gated_mlp(hf, f"{src}.shared_mlp", rank, tp).items()})
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"{norm}.weight"] = hf[f"{src}.{norm}.weight"]
        return out

    return convert_model(hf, config, rank, tp, dtype, convert_layer)
