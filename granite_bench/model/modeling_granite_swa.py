"""Neuron-style sliding-window Granite (`model_type` "granite_swa": IBM's "swash" dense models such as
granite-swash-2b), laid out like transformers' `modeling_granite_swa.py`: Granite's decoder layer (attention + gated
MLP, each branch scaled by `residual_multiplier`) whose attention has a per-layer kind (sliding window or full),
learned per-head sinks and a per-layer RoPE base (0 = NoPE), over a KV cache whose sliding layers are rings."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .backend.sliding_attention import SlidingWindowAttention
from .backend.window_decoder import NeuronGraniteSWABase, convert_window_attention
from .modeling_granite import GraniteDecoderLayer
from .modeling_granite import convert_hf_state_dict as convert_granite_state_dict


class GraniteSWADecoderLayer(GraniteDecoderLayer):
    """Granite's decoder layer with the sliding-window attention (kind, sinks, per-layer RoPE base)."""

    attention_class = SlidingWindowAttention


class NeuronGraniteSWAForCausalLM(NeuronGraniteSWABase):
    """One rank's shard of a sliding-window Granite causal LM with a windowed static KV cache."""

    def build_layer(self, config, layout, layer_idx, neuron_config):
        return GraniteSWADecoderLayer(config, layout, layer_idx, neuron_config)


def convert_hf_state_dict(hf: Mapping[str, torch.Tensor], config, rank: int, tp: int, dtype: torch.dtype,
                          fused_qkv: bool = True, ep: int = 1) -> dict[str, torch.Tensor]:
    """HF `GraniteSWAForCausalLM` tensors -> rank `rank` of `tp`'s state dict (sinks sharded with their heads)."""
    return convert_granite_state_dict(hf, config, rank, tp, dtype, fused_qkv, ep, attention=convert_window_attention)
