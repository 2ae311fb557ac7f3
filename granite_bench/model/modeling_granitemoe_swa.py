"""Neuron-style sliding-window Granite MoE (`model_type` "granitemoe_swa": IBM's "swash" MoE models such as
granite-swash-3b-a600m), laid out like transformers' `modeling_granitemoe_swa.py`: Granite MoE-shared's decoder
layer (top-k routed experts plus an optional shared MLP, `shared_intermediate_size` 0 = none) whose attention has a
per-layer kind (sliding window or full), learned per-head sinks and a per-layer RoPE base (0 = NoPE)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .backend.checkpoint import convert_attention_and_norms, convert_model
from .backend.decoder import head_plan
from .backend.moe import ExpertsAndSharedMLPLayer, convert_experts_and_shared_mlp
from .backend.sliding_attention import SlidingWindowAttention
from .backend.window_decoder import NeuronGraniteSWABase, convert_window_attention


class GraniteMoeSWADecoderLayer(ExpertsAndSharedMLPLayer):
    attention_class = SlidingWindowAttention


class NeuronGraniteMoeSWAForCausalLM(NeuronGraniteSWABase):
    """One rank's shard of a sliding-window Granite MoE causal LM with a windowed static KV cache."""

    def build_layer(self, config, layout, layer_idx, neuron_config):
        return GraniteMoeSWADecoderLayer(config, layout, layer_idx, neuron_config)


def convert_hf_state_dict(hf: Mapping[str, torch.Tensor], config, rank: int, tp: int, dtype: torch.dtype,
                          fused_qkv: bool = True, ep: int = 1) -> dict[str, torch.Tensor]:
    """HF `GraniteMoeSWAForCausalLM` tensors (either expert layout) -> rank `rank` of `tp`'s state dict."""
    plan = head_plan(config, tp, ep)

    def convert_layer(src: str) -> dict[str, torch.Tensor]:
        out = convert_attention_and_norms(hf, src, plan, rank, fused_qkv, attention=convert_window_attention)
        out.update(convert_experts_and_shared_mlp(hf, src, config, rank, tp, ep))
        return out

    return convert_model(hf, config, rank, tp, dtype, convert_layer)
