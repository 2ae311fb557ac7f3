"""Neuron-style dense Granite (`model_type` "granite": Granite 3.x, 4.1), laid out like transformers'
`modeling_granite.py`: decoder layer (attention + gated MLP, each branch scaled by `residual_multiplier`) and the
causal LM, on the shared backend. The state-dict conversion fuses Q/K/V per rank and shards the MLP."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .backend.attention import HeadLayout
from .backend.checkpoint import convert_attention_and_norms, convert_gated_mlp, convert_model
from .backend.decoder import GraniteDecoderLayerBase, NeuronGraniteBase, head_plan
from .backend.mlp import GatedMLP
from .backend.step import DecodeStep
from .config import NeuronConfig


class GraniteDecoderLayer(GraniteDecoderLayerBase):
    def __init__(self, config, layout: HeadLayout, layer_idx: int, neuron_config: NeuronConfig):
        super().__init__(config, layout, layer_idx, neuron_config)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, neuron_config.dtype,
                            bool(getattr(config, "mlp_bias", False)))

    def feed_forward(self, normed: torch.Tensor, step: DecodeStep) -> torch.Tensor:
        return self.mlp(normed)


class NeuronGraniteForCausalLM(NeuronGraniteBase):
    """One rank's shard of a dense Granite causal LM with a static KV cache."""

    def build_layer(self, config, layout, layer_idx, neuron_config):
        return GraniteDecoderLayer(config, layout, layer_idx, neuron_config)


def convert_hf_state_dict(hf: Mapping[str, torch.Tensor], config, rank: int, tp: int, dtype: torch.dtype,
                          fused_qkv: bool = True, ep: int = 1, *, attention=None) -> dict[str, torch.Tensor]:
    """HF `GraniteForCausalLM` tensors -> rank `rank` of `tp`'s state dict for `NeuronGraniteForCausalLM`
    (`attention`: another architecture's attention converter, see `convert_attention_and_norms`)."""
    plan = head_plan(config, tp, ep)

    def convert_layer(src: str) -> dict[str, torch.Tensor]:
        out = convert_attention_and_norms(hf, src, plan, rank, fused_qkv, attention=attention)
        out.update({f"mlp.{k}": v for k, v in convert_gated_mlp(hf, f"{src}.mlp", rank, tp).items()})
        return out

    return convert_model(hf, config, rank, tp, dtype, convert_layer)
