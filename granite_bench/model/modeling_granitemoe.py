"""Neuron-style Granite MoE (`model_type` "granitemoe": Granite 3.0/3.1 MoE such as 1b-a400m and 3b-a800m), laid out
like transformers' `modeling_granitemoe.py`: a decoder layer of attention and a top-k routed `block_sparse_moe`,
each branch scaled by `residual_multiplier`, on the shared backend (experts sharded by intermediate slice, or by
expert with `moe_ep_degree`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .backend.attention import HeadLayout
from .backend.checkpoint import convert_attention_and_norms, convert_model
from .backend.decoder import GraniteDecoderLayerBase, NeuronGraniteBase, head_plan
from .backend.moe import GraniteMoE, convert_moe
from .backend.step import DecodeStep
from .config import NeuronConfig


class GraniteMoeDecoderLayer(GraniteDecoderLayerBase):
    def __init__(self, config, layout: HeadLayout, layer_idx: int, neuron_config: NeuronConfig):
        super().__init__(config, layout, layer_idx, neuron_config)
        self.block_sparse_moe = GraniteMoE(config, neuron_config.dtype, neuron_config.moe_ep_degree)

    def feed_forward(self, normed: torch.Tensor, step: DecodeStep) -> torch.Tensor:
        return self.block_sparse_moe(normed, step, self.layer_idx)


class NeuronGraniteMoeForCausalLM(NeuronGraniteBase):
    """One rank's shard of a Granite MoE causal LM with a static KV cache."""

    def build_layer(self, config, layout, layer_idx, neuron_config):
        return GraniteMoeDecoderLayer(config, layout, layer_idx, neuron_config)


def convert_hf_state_dict(hf: Mapping[str, torch.Tensor], config, rank: int, tp: int, dtype: torch.dtype,
                          fused_qkv: bool = True, ep: int = 1) -> dict[str, torch.Tensor]:
    """HF `GraniteMoeForCausalLM` tensors (either expert layout) -> rank `rank` of `tp`'s state dict."""
    plan = head_plan(config, tp, ep)

    def convert_layer(src: str) -> dict[str, torch.Tensor]:
        out = convert_attention_and_norms(hf, src, plan, rank, fused_qkv)
        out.update({f"block_sparse_moe.{k}": v
                    for k, v in convert_moe(hf, f"{src}.block_sparse_moe", rank, tp, ep).items()})
        return out

    return convert_model(hf, config, rank, tp, dtype, convert_layer)
