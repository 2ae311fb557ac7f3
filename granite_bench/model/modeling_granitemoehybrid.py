"""Neuron-style Granite 4.0 hybrid (`model_type` "granitemoehybrid"), laid out like transformers'
`modeling_granitemoehybrid.py`: each decoder layer mixes with either a Mamba2 mixer or attention (`layer_types`),
then runs the shared MLP, plus routed experts when `num_local_experts` > 0; every branch is scaled by
`residual_multiplier`. Attention uses RoPE only when `position_embedding_type` is "rope" (NoPE otherwise, as HF).
The static caches: attention KV for attention layers, conv and SSM states for Mamba layers (`HybridStateCache`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from . import registry
from .backend import parallel_state as ps
from .backend.attention import GraniteAttention, HeadLayout
from .backend.checkpoint import convert_attention, convert_fused_gated_mlp, convert_model
from .backend.decoder import NeuronGraniteBase, head_plan
from .backend.mamba import MambaMixer, MambaShape, convert_mamba
from .backend.mlp import GatedMLP
from .backend.moe import GraniteMoE, convert_moe
from .backend.norms import RMSNorm
from .backend.state_cache import HybridStateCache
from .backend.step import DecodeStep
from .config import DTYPES, NeuronConfig


def layer_kinds(config) -> list[str]:
    """"mamba" / "attention" per decoder layer (HF's names, old and new: mamba/linear_attention,
    attention/full_attention)."""
    return registry.hybrid_layer_kinds(getattr(config, "layer_types", None), config.num_hidden_layers)


def uses_rope(config) -> bool:
    return getattr(config, "position_embedding_type", None) == "rope"


class NoRotaryEmbedding(nn.Module):
    """NoPE: cos 1, sin 0 at every position, so attention's rotation leaves q and k exactly as they are."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.head_dim = head_dim

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids [B, L] -> cos, sin [B, 1, L, d] fp32."""
        shape = (*position_ids.shape[:1], 1, position_ids.shape[-1], self.head_dim)
        return (torch.ones(shape, device=position_ids.device),
                torch.zeros(shape, device=position_ids.device))


class GraniteMoeHybridDecoderLayer(nn.Module):
    def __init__(self, config, layout: HeadLayout, layer_idx: int, neuron_config: NeuronConfig):
        super().__init__()
        dtype = neuron_config.dtype
        self.layer_idx = layer_idx
        self.kind = layer_kinds(config)[layer_idx]
        if self.kind == "mamba":
            self.mamba, self.self_attn = MambaMixer(config, layer_idx, dtype), None
        else:
            self.mamba = None
            self.self_attn = GraniteAttention(config, layout, layer_idx, dtype, fused_qkv=neuron_config.fused_qkv)
        experts = int(getattr(config, "num_local_experts", 0) or 0)
        self.block_sparse_moe = GraniteMoE(config, dtype, neuron_config.moe_ep_degree) if experts > 0 else None
        self.shared_mlp = GatedMLP(config.hidden_size, config.shared_intermediate_size, dtype)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.residual_multiplier = float(config.residual_multiplier)

    def mix(self, normed: torch.Tensor, step: DecodeStep) -> torch.Tensor:
        if self.mamba is not None:
            return self.mamba(normed, step, step.cache)
        return self.self_attn(normed, step, step.cache)

    def forward(self, hidden: torch.Tensor, step: DecodeStep) -> torch.Tensor:
        hidden = hidden + self.mix(self.input_layernorm(hidden), step) * self.residual_multiplier
        step.record(self.layer_idx, self.kind, hidden)          # residual stream after the mixer
        normed = self.post_attention_layernorm(hidden)
        mlp_out = self.block_sparse_moe(normed, step, self.layer_idx) if self.block_sparse_moe is not None else None
        shared_out = self.shared_mlp(normed)
        step.record(self.layer_idx, "shared_mlp", shared_out)
        mlp_out = shared_out if mlp_out is None else mlp_out + shared_out
        hidden = hidden + mlp_out * self.residual_multiplier
        step.record(self.layer_idx, "mlp", hidden)
        return hidden


class NeuronGraniteMoeHybridForCausalLM(NeuronGraniteBase):
    """One rank's shard of a Granite 4.0 hybrid causal LM with static KV and Mamba state caches."""

    def build_layer(self, config, layout, layer_idx, neuron_config):
        return GraniteMoeHybridDecoderLayer(config, layout, layer_idx, neuron_config)

    def build_rotary(self) -> nn.Module:
        return super().build_rotary() if uses_rope(self.config) else NoRotaryEmbedding(self.layout.head_dim)

    def build_cache(self) -> nn.Module:
        kinds = layer_kinds(self.config)
        ssm_dtype = DTYPES[self.neuron_config.extra.get("ssm_state_dtype", "float32")]
        return HybridStateCache([i for i, k in enumerate(kinds) if k == "attention"],
                                [i for i, k in enumerate(kinds) if k == "mamba"],
                                self.neuron_config.batch_size, self.layout.kv_heads_per_rank,
                                self.neuron_config.sequence_length, self.layout.head_dim, self.neuron_config.dtype,
                                MambaShape.of(self.config, ps.get_tensor_model_parallel_size()),
                                ssm_state_dtype=ssm_dtype)


def convert_hf_state_dict(hf: Mapping[str, torch.Tensor], config, rank: int, tp: int, dtype: torch.dtype,
                          fused_qkv: bool = True, ep: int = 1) -> dict[str, torch.Tensor]:
    """HF `GraniteMoeHybridForCausalLM` tensors (either expert layout) -> rank `rank` of `tp`'s state dict."""
    plan = head_plan(config, tp, ep)
    kinds = layer_kinds(config)
    experts = int(getattr(config, "num_local_experts", 0) or 0)

    def convert_layer(src: str) -> dict[str, torch.Tensor]:
        if kinds[int(src.rsplit(".", 1)[1])] == "mamba":
            parts = {"mamba": convert_mamba(hf, f"{src}.mamba", config, rank, tp)}
        else:
            parts = {"self_attn": convert_attention(hf, f"{src}.self_attn", plan, rank, fused_qkv)}
        if experts:
            parts["block_sparse_moe"] = convert_moe(hf, f"{src}.block_sparse_moe", rank, tp, ep)
        parts["shared_mlp"] = convert_fused_gated_mlp(hf, f"{src}.shared_mlp", rank, tp)
        parts.update({norm: {"weight": hf[f"{src}.{norm}.weight"]}
                      for norm in ("input_layernorm", "post_attention_layernorm")})
        return {f"{module}.{name}": tensor for module, tensors in parts.items() for name, tensor in tensors.items()}

    return convert_model(hf, config, rank, tp, dtype, convert_layer)
