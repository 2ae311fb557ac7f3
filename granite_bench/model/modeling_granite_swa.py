"""Neuron-style sliding-window Granite (`model_type` "granite_swa": IBM's "swash" dense models such as
granite-swash-2b), laid out like transformers' `modeling_granite_swa.py`: Granite's decoder layer (attention + gated
MLP, each branch scaled by `residual_multiplier`) whose attention has a per-layer kind (sliding window or full),
learned per-head sinks and a per-layer RoPE base (0 = NoPE), over a KV cache whose sliding layers are rings."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .backend.attention import HeadLayout
from .backend.checkpoint import convert_attention_and_norms, convert_gated_mlp, convert_model
from .backend.decoder import GraniteDecoderLayerBase, head_plan
from .backend.mlp import GatedMLP
from .backend.sliding_attention import SlidingWindowAttention
from .backend.step import DecodeStep
from .backend.window_decoder import NeuronGraniteSWABase, convert_window_attention
from .config import NeuronConfig


class GraniteSWADecoderLayer(GraniteDecoderLayerBase):
    attention_class = SlidingWindowAttention

    def __init__(self, config, layout: HeadLayout, layer_idx: int, neuron_config: NeuronConfig):
        super().__init__(config, layout, layer_idx, neuron_config)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, neuron_config.dtype,
                            bool(getattr(config, "mlp_bias", False)))

    def feed_forward(self, normed: torch.Tensor, step: DecodeStep) -> torch.Tensor:
        return self.mlp(normed)


class NeuronGraniteSWAForCausalLM(NeuronGraniteSWABase):
    """One rank's shard of a sliding-window Granite causal LM with a windowed static KV cache."""

    def build_layer(self, config, layout, layer_idx, neuron_config):
        return GraniteSWADecoderLayer(config, layout, layer_idx, neuron_config)


def convert_hf_state_dict(hf: Mapping[str, torch.Tensor], config, rank: int, tp: int, dtype: torch.dtype,
                          fused_qkv: bool = True, ep: int = 1) -> dict[str, torch.Tensor]:
    """HF `GraniteSWAForCausalLM` tensors -> rank `rank` of `tp`'s state dict (sinks sharded with their heads)."""
    plan = head_plan(config, tp, ep)

    def convert_layer(src: str) -> dict[str, torch.Tensor]:
        out = convert_attention_and_norms(hf, src, plan, rank, fused_qkv, attention=convert_window_attention)
        out.update({f"mlp.{k}": v for k, v in convert_gated_mlp(hf, f"{src}.mlp", rank, tp).items()})
        return out

    return convert_model(hf, config, rank, tp, dtype, convert_layer)
