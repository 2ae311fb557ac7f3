"""The sliding-window Granites' model base: `NeuronGraniteBase` with one RoPE table per distinct layer base
(`layer_rope_theta`) and a KV cache whose sliding layers are rings of `sliding_window` slots."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .checkpoint import convert_attention, select_heads
from .decoder import NeuronGraniteBase
from .head_sharding import HeadPlan
from .sliding_attention import PerThetaRotary, layer_kinds
from .window_cache import WindowedKVCache


class NeuronGraniteSWABase(NeuronGraniteBase):
    """Subclasses build layers whose attention is `SlidingWindowAttention`."""

    def build_rotary(self) -> torch.nn.Module:
        return PerThetaRotary(self.layout.head_dim, self.neuron_config.sequence_length, self.config)

    def decode_mask(self, positions: torch.Tensor, kv_len: int) -> dict[str, torch.Tensor]:
        """{layer kind: boolean [B, 1, 1, slots read]}: one mask per kind and step, shared by its layers."""
        return self.kv_cache.decode_masks(positions, kv_len)

    def build_cache(self) -> torch.nn.Module:
        return WindowedKVCache(layer_kinds(self.config), self.config.sliding_window, self.neuron_config.batch_size,
                               self.layout.kv_heads_per_rank, self.neuron_config.sequence_length,
                               self.layout.head_dim, self.neuron_config.dtype)


def convert_sinks(hf: Mapping[str, torch.Tensor], prefix: str, plan: HeadPlan, rank: int) -> dict[str, torch.Tensor]:
    """HF `self_attn.sinks` [heads] -> this rank's query heads' sinks (0 for a padded head, which has no output)."""
    return {"sinks": select_heads(hf[f"{prefix}.sinks"], plan.q_heads[rank], 1, 0)}


def convert_window_attention(hf: Mapping[str, torch.Tensor], prefix: str, plan: HeadPlan, rank: int,
                             fused_qkv: bool) -> dict[str, torch.Tensor]:
    """HF `self_attn` under `prefix` -> this rank's (fused) projections and its heads' sinks."""
    return {**convert_attention(hf, prefix, plan, rank, fused_qkv), **convert_sinks(hf, prefix, plan, rank)}
