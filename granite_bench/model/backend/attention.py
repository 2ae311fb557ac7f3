"""Attention base: GQA with a fused QKV projection, Granite's q·k scale, fp32 softmax.

Two paths, as in a Neuron port:
- `prefill_attention`: context encoding attends causally over the freshly computed k/v of the bucket and writes them
  to the KV cache prefix. Prompts are right-padded, so a causal mask alone keeps every real query off the padding;
  no [L, L] mask or fp32 score matrix is built (SDPA's fused causal kernel: memory O(L), not O(L^2), at 16k+ tokens);
- `decode_attention`: token generation writes the new k/v at each row's position, then attends over the cache's
  first `kv_len` positions (prior + active token).
Both use `self.scaling` = config.attention_multiplier, never 1/sqrt(head_dim).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import parallel_state as ps
from .kv_cache import KVCacheManager
from .parallel_layers import ColumnParallelLinear, RowParallelLinear
from .single_row import REDUCED_PRECISION
from .rope import apply_rotary_pos_emb
from .step import DecodeStep


@dataclass(frozen=True)
class HeadLayout:
    """How attention heads sit on one TP rank (the same on every rank)."""

    q_heads_per_rank: int
    kv_heads_per_rank: int
    head_dim: int

    @property
    def groups(self) -> int:
        return self.q_heads_per_rank // self.kv_heads_per_rank


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                      scaling: float) -> torch.Tensor:
    """q [B, Hq, Lq, d], k/v [B, Hkv, Lk, d], mask [B, 1, Lq, Lk] (boolean, True = attend; or additive, 0 / -inf in
    q's dtype), or None for causal attention (query i sees keys 0..i, Lq == Lk) -> [B, Hq, Lq, d].

    PyTorch's fused attention with `enable_gqa` groups query heads over their KV head without copying k/v, takes
    Granite's q·k scale, and accumulates the softmax in fp32 for bf16/fp16 inputs. Every row's mask admits key 0,
    so no row is fully masked. One bf16/fp16 query on CPU (a decode step) goes through `one_query_attention`
    instead: the fused CPU kernel takes 8-13x its fp32 time there.
    """
    if q.device.type == "cpu" and q.dtype in REDUCED_PRECISION and q.shape[2] == 1 and mask is not None:
        return one_query_attention(q, k, v, mask, scaling)
    return nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                                      scale=scaling, enable_gqa=q.shape[1] != k.shape[1])


def one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                        scaling: float) -> torch.Tensor:
    """grouped_attention for one query per row, computed in fp32 (scores, softmax and the weighted sum of v) and
    returned in q's dtype: q [B, Hq, 1, d], k/v [B, Hkv, L, d], mask [B, 1, 1, L] -> [B, Hq, 1, d].

    The query heads of one KV head (consecutive: head h reads KV head h // groups) form the rows of one matrix
    product against that head's keys, so k/v are read once, not once per query head. On CPU in bf16 this takes
    0.12 ms where the fused kernel takes 1.0 ms (granite-3.1-2b's 32/8 heads over 256 positions; 0.36 vs 4.9 ms
    over 1024)."""
    batch, q_heads, _, head_dim = q.shape
    kv_heads = k.shape[1]
    grouped = q.reshape(batch, kv_heads, q_heads // kv_heads, head_dim).float()       # [B, Hkv, G, d]
    scores = torch.matmul(grouped, k.float().transpose(-1, -2)) * scaling              # [B, Hkv, G, L]
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:
        scores = scores + mask.float()                                                 # [B, 1, 1, L] broadcast
    out = torch.matmul(torch.softmax(scores, dim=-1), v.float())                       # [B, Hkv, G, d]
    return out.reshape(batch, q_heads, 1, head_dim).to(q.dtype)


class GraniteAttention(nn.Module):
    def __init__(self, config, layout: HeadLayout, layer_idx: int, dtype: torch.dtype, fused_qkv: bool = True):
        super().__init__()
        self.layer_idx = layer_idx
        self.layout = layout
        self.scaling = float(config.attention_multiplier)
        self.fused_qkv = fused_qkv
        tp = ps.get_tensor_model_parallel_size()
        d = layout.head_dim
        q_size, kv_size = layout.q_heads_per_rank * d, layout.kv_heads_per_rank * d
        bias = bool(getattr(config, "attention_bias", False))
        if fused_qkv:
            self.qkv_proj = ColumnParallelLinear(config.hidden_size, (q_size + 2 * kv_size) * tp, bias=bias,
                                                 gather_output=False, dtype=dtype)
        else:
            self.q_proj = ColumnParallelLinear(config.hidden_size, q_size * tp, bias=bias, gather_output=False,
                                               dtype=dtype)
            self.k_proj = ColumnParallelLinear(config.hidden_size, kv_size * tp, bias=bias, gather_output=False,
                                               dtype=dtype)
            self.v_proj = ColumnParallelLinear(config.hidden_size, kv_size * tp, bias=bias, gather_output=False,
                                               dtype=dtype)
        self.o_proj = RowParallelLinear(q_size * tp, config.hidden_size, bias=bias, input_is_parallel=True,
                                        dtype=dtype)

    def project_qkv(self, hidden: torch.Tensor):
        """hidden [B, L, H] -> q [B, Hq, L, d], k/v [B, Hkv, L, d] (this rank's heads)."""
        batch, length, _ = hidden.shape
        d = self.layout.head_dim
        q_size, kv_size = self.layout.q_heads_per_rank * d, self.layout.kv_heads_per_rank * d
        if self.fused_qkv:
            q, k, v = self.qkv_proj(hidden).split([q_size, kv_size, kv_size], dim=-1)
        else:
            q, k, v = self.q_proj(hidden), self.k_proj(hidden), self.v_proj(hidden)
        q = q.view(batch, length, -1, d).transpose(1, 2)
        k = k.view(batch, length, -1, d).transpose(1, 2)
        v = v.view(batch, length, -1, d).transpose(1, 2)
        return q, k, v

    def prefill_attention(self, q, k, v, mask):
        return grouped_attention(q, k, v, mask, self.scaling)

    def decode_attention(self, q, k_cache, v_cache, mask):
        return grouped_attention(q, k_cache, v_cache, mask, self.scaling)

    def forward(self, hidden: torch.Tensor, step: DecodeStep, kv_cache: KVCacheManager) -> torch.Tensor:
        """hidden [B, L, H] -> [B, L, H]: context encoding when `step.positions` is None, else token generation at
        `step.positions` [B] over `step.kv_len` cache slots."""
        q, k, v = self.project_qkv(hidden)
        q, k = apply_rotary_pos_emb(q, k, step.cos, step.sin)
        if step.positions is None:
            kv_cache.update_context_encoding(self.layer_idx, k, v)
            out = self.prefill_attention(q, k, v, step.mask)
        else:
            kv_cache.update_token_generation(self.layer_idx, k, v, step.positions)
            k_all, v_all = kv_cache.read(self.layer_idx, step.kv_len)
            out = self.decode_attention(q, k_all, v_all, step.mask)
        batch, _, length, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))
