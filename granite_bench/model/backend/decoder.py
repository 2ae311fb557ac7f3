"""What every Granite decoder shares (NxDI's `NeuronBaseModel`, Granite flavoured): the embedding scaled by
`embedding_multiplier`, a stack of decoder layers the architecture builds, the final norm, the LM head divided by
`logits_scaling`, RoPE tables, the static caches, and the two static-shape entry points: `context_encoding`
(right-padded prompts, one graph per bucket) and `token_generation` (one token per row, one graph per KV bucket).

An architecture's model class subclasses `NeuronGraniteBase` and implements `build_layer`; its layers take
`(hidden, step)` where `step` (a `DecodeStep`) carries what one graph call gives every layer.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import NeuronConfig
from . import parallel_state as ps
from .attention import GraniteAttention, HeadLayout
from .head_sharding import HeadPlan, TPDegreeError, plan_heads
from .kv_cache import KVCacheManager
from .norms import RMSNorm
from .parallel_layers import ColumnParallelLinear, ParallelEmbedding
from .rope import RotaryEmbedding, rope_parameters
from .step import DecodeStep


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def config_dict(config) -> dict:
    """A transformers config or the plain namespace TP workers build from one, as a dict."""
    return config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))


def head_plan(config, tp_degree: int, ep_degree: int = 1) -> HeadPlan:
    """How this config's heads sit on `tp_degree` ranks; TPDegreeError when it cannot be sharded that way (heads, and
    every size the registry says a TP degree must divide)."""
    from ..registry import architecture, parallel_problems
    plan = plan_heads(config.num_attention_heads, config.num_key_value_heads, tp_degree, head_dim_of(config))
    data = config_dict(config)
    problems = parallel_problems(architecture(data.get("model_type")), data, tp_degree, ep_degree)
    if problems:
        raise TPDegreeError(problems[0])
    return plan


class GraniteEmbedding(ParallelEmbedding):
    """Parallel embedding whose output is scaled by `embedding_multiplier`."""

    def __init__(self, config, dtype: torch.dtype):
        super().__init__(config.vocab_size, config.hidden_size, config.pad_token_id, dtype=dtype)
        self.embedding_multiplier = float(config.embedding_multiplier)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids) * self.embedding_multiplier


class GraniteHead(ColumnParallelLinear):
    """LM head (vocabulary padded to a multiple of tp) whose logits are divided by `logits_scaling`."""

    def __init__(self, config, dtype: torch.dtype):
        super().__init__(config.hidden_size, config.vocab_size, bias=False, gather_output=True, dtype=dtype, pad=True)
        self.vocab_size = config.vocab_size
        self.logits_scaling = float(config.logits_scaling)

    def use_input_major_layout(self) -> None:
        """Keep the weight's values and [V, H] shape but lay it out [H, V] in memory. On CPU in fp32, the decode
        step's matrix-vector product over a large vocabulary with short rows (hidden 256 over 49k tokens) runs
        about 3x faster this way (8 -> 24 GB/s measured); in bf16 it is slower, so only fp32 uses it."""
        self.weight.data = self.weight.data.t().contiguous().t()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().forward(hidden)[..., :self.vocab_size]  # padded vocabulary rows are dropped
        return logits / self.logits_scaling


class GraniteDecoderLayerBase(nn.Module):
    """Granite's decoder layer: input norm, attention, the branch scaled by `residual_multiplier` and added; post
    norm, the architecture's feed-forward (`feed_forward`: MLP, MoE, ...), scaled and added. Records the residual
    stream after each branch ("attention", "mlp") for localisation."""

    attention_class = GraniteAttention   # an architecture may use another attention (sliding window, sinks)

    def __init__(self, config, layout: HeadLayout, layer_idx: int, neuron_config: NeuronConfig):
        super().__init__()
        dtype = neuron_config.dtype
        self.layer_idx = layer_idx
        self.self_attn = self.attention_class(config, layout, layer_idx, dtype, fused_qkv=neuron_config.fused_qkv)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.residual_multiplier = float(config.residual_multiplier)

    def feed_forward(self, normed: torch.Tensor, step: DecodeStep) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, hidden: torch.Tensor, step: DecodeStep) -> torch.Tensor:
        attn_out = self.self_attn(self.input_layernorm(hidden), step, step.cache)
        hidden = hidden + attn_out * self.residual_multiplier  # Granite: scaled attention branch
        step.record(self.layer_idx, "attention", hidden)
        ff_out = self.feed_forward(self.post_attention_layernorm(hidden), step)
        hidden = hidden + ff_out * self.residual_multiplier  # Granite: scaled feed-forward branch
        step.record(self.layer_idx, "mlp", hidden)
        return hidden


class NeuronGraniteBase(nn.Module):
    """One rank's shard of a Granite causal LM with static caches; subclasses build the decoder layers."""

    def __init__(self, config, neuron_config: NeuronConfig):
        super().__init__()
        self.config = config
        self.neuron_config = neuron_config
        dtype = neuron_config.dtype
        self.plan = head_plan(config, ps.get_tensor_model_parallel_size(), neuron_config.moe_ep_degree)
        self.layout = HeadLayout(self.plan.q_heads_per_rank, self.plan.kv_heads_per_rank, self.plan.head_dim)
        self.embed_tokens = GraniteEmbedding(config, dtype)
        self.layers = nn.ModuleList([self.build_layer(config, self.layout, i, neuron_config)
                                     for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.lm_head = GraniteHead(config, dtype)
        self.rotary_emb = self.build_rotary()
        self.kv_cache = self.build_cache()

    def build_layer(self, config, layout: HeadLayout, layer_idx: int, neuron_config: NeuronConfig) -> nn.Module:
        raise NotImplementedError

    def build_rotary(self) -> nn.Module:
        return RotaryEmbedding(self.layout.head_dim, self.neuron_config.sequence_length,
                               rope_parameters(self.config), self.config.max_position_embeddings)

    def build_cache(self) -> nn.Module:
        """The static cache every layer writes in place (attention KV here; an architecture may add states)."""
        return KVCacheManager(self.config.num_hidden_layers, self.neuron_config.batch_size,
                              self.layout.kv_heads_per_rank, self.neuron_config.sequence_length,
                              self.layout.head_dim, self.neuron_config.dtype)

    def reset_static_buffers(self, device) -> None:
        """Rebuild the non-persistent buffers (RoPE tables) and zero the caches: after `to_empty` they are
        uninitialised memory."""
        self.rotary_emb = self.build_rotary().to(device)
        self.kv_cache.reset()

    def decode_layers(self, hidden: torch.Tensor, step: DecodeStep) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden, step)
        return self.norm(hidden)

    def context_encoding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, capture=None) -> torch.Tensor:
        """input_ids, attention_mask [B, L] (right padded, 1 = real token) -> logits [B, L, V], or [B, 1, V] at each
        row's last token when output_logits is off. Fills the caches from position 0."""
        batch, length = input_ids.shape
        position_ids = torch.arange(length, device=input_ids.device).expand(batch, length)
        cos, sin = self.rotary_emb(position_ids)
        # mask None = causal: right padding sits after every real token, so no [B, 1, L, L] mask is needed
        step = DecodeStep(cos, sin, None, attention_mask=attention_mask, cache=self.kv_cache, capture=capture)
        hidden = self.decode_layers(self.embed_tokens(input_ids), step)
        if not self.neuron_config.output_logits:
            last = attention_mask.sum(-1) - 1  # [B]
            hidden = hidden[torch.arange(batch, device=hidden.device), last].unsqueeze(1)
        return self.lm_head(hidden).float()

    def decode_mask(self, positions: torch.Tensor, kv_len: int):
        """Token generation's mask, built once per step for every layer: additive [B, 1, 1, kv_len], 0 where slot <=
        the row's position (what attention turns a boolean mask into in every layer), -inf elsewhere."""
        slots = torch.arange(kv_len, device=positions.device)
        allowed = (slots[None, :] <= positions[:, None])[:, None, None, :]  # [B, 1, 1, kv_len]
        return torch.zeros(allowed.shape, dtype=self.neuron_config.dtype, device=allowed.device).masked_fill(
            ~allowed, float("-inf"))

    def token_generation(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_len: int,
                         capture=None) -> torch.Tensor:
        """input_ids [B, 1] at positions [B]; attends over the first kv_len cache slots -> logits [B, 1, V]."""
        cos, sin = self.rotary_emb(positions.unsqueeze(1))
        step = DecodeStep(cos, sin, self.decode_mask(positions, kv_len), positions, kv_len, cache=self.kv_cache,
                          capture=capture)
        hidden = self.decode_layers(self.embed_tokens(input_ids), step)
        return self.lm_head(hidden).float()
