"""Attention of the sliding-window Granites (`granite_swa`, `granitemoe_swa`, HF's `GraniteSWAAttention`): a
per-layer kind (a sliding layer's query i sees keys in (i - W, i], a full layer's keys [0, i]), a learned sink per
head, and a per-layer RoPE base (`layer_rope_theta`, 0 = NoPE: no rotation).

The sink is one extra logit per head in the softmax denominator; as HF computes it, in fp32:
    out = softmax(s) · V · sigmoid(logsumexp(s) - sink)
which is exp(s) · V / (sum exp(s) + exp(sink)). SDPA cannot take it (no log-sum-exp out), so both paths run the
scores explicitly in fp32: context encoding in blocks of queries, each over only the keys its window can reach
(memory O(block · (block + W)) for a sliding layer, never [L, L]); token generation over the cache slots read.
"""

from __future__ import annotations

import torch
from torch import nn

from . import parallel_state as ps
from .attention import GraniteAttention, HeadLayout
from .head_sharding import gathered_head_order, plan_heads
from .parallel_layers import gather_from_tp_region
from .rope import RotaryEmbedding, apply_rotary_pos_emb, rope_parameters
from .step import DecodeStep
from .window_cache import SLIDING, WindowedKVCache

QUERY_BLOCK = 256   # context encoding: queries per block (bounds the fp32 score block)


def sink_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scaling: float,
                   sinks: torch.Tensor | None, upcast: bool = True) -> torch.Tensor:
    """q [B, Hq, Lq, d], k/v [B, Hkv, Lk, d], allowed boolean [B or 1, 1, Lq, Lk] (every row admits a key),
    sinks [Hq] or None -> [B, Hq, Lq, d] in q's dtype. Query head h uses KV head h // (Hq / Hkv); the scores, softmax,
    log-sum-exp and the sink scale in fp32.

    upcast: q, k, v in fp32 for both matmuls (context encoding). Off (token generation), the two matmuls run in the
    cache's dtype, as HF's eager attention runs them: q·K^T accumulates in fp32 inside the kernel and only the
    [B, Hq, Lq, Lk] scores are upcast, the fp32 probabilities are rounded to the cache's dtype for probs·V; the cache
    is never copied to fp32 (in bf16 that copy cost more than the matmuls). In fp32 both settings are the same ops."""
    out_dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    batch, q_heads, q_len, dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    groups = q_heads // kv_heads
    grouped = q.reshape(batch, kv_heads, groups * q_len, dim)                          # heads grouped by KV head
    scores = torch.matmul(grouped, k.transpose(-1, -2)).float().view(batch, q_heads, q_len, k_len) * scaling
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype).view(batch, kv_heads, groups * q_len, k_len)
    out = torch.matmul(probs, v).float().view(batch, q_heads, q_len, dim)
    if sinks is not None:
        lse = torch.logsumexp(scores, dim=-1)                                         # [B, Hq, Lq]
        out = out * torch.sigmoid(lse - sinks.float().view(1, -1, 1)).unsqueeze(-1)
    return out.to(out_dtype)


def window_allowed(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """q_pos [Lq], k_pos [Lk] -> [1, 1, Lq, Lk]: causal, and within (q - window, q] when window is set."""
    ok = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        ok = ok & (k_pos[None, :] > q_pos[:, None] - window)
    return ok[None, None]


def layer_kinds(config) -> list[str]:
    """`layer_types` as HF defaults it: full when i % 4 == 0, sliding otherwise."""
    kinds = getattr(config, "layer_types", None)
    return list(kinds) if kinds else ["full_attention" if i % 4 == 0 else SLIDING
                                      for i in range(config.num_hidden_layers)]


def layer_thetas(config) -> list[float]:
    """`layer_rope_theta` as HF defaults it: the global rope_theta for every layer; 0 = NoPE."""
    thetas = getattr(config, "layer_rope_theta", None)
    if thetas:
        return [float(t) for t in thetas]
    return [float(rope_parameters(config)["rope_theta"])] * config.num_hidden_layers


class PerThetaRotary(nn.Module):
    """One cos/sin table per distinct non-zero RoPE base of the model, built once; forward gives
    ({theta: cos [B, 1, L, d]}, {theta: sin}) at the positions asked."""

    def __init__(self, head_dim: int, max_positions: int, config):
        super().__init__()
        params = rope_parameters(config)
        self.thetas = sorted({t for t in layer_thetas(config) if t})
        self.tables = nn.ModuleList([
            RotaryEmbedding(head_dim, max_positions, {**params, "rope_theta": theta}, config.max_position_embeddings)
            for theta in self.thetas])

    def forward(self, position_ids: torch.Tensor):
        pairs = [table(position_ids) for table in self.tables]
        return ({t: c for t, (c, _) in zip(self.thetas, pairs)}, {t: s for t, (_, s) in zip(self.thetas, pairs)})


class SlidingWindowAttention(GraniteAttention):
    """GraniteAttention with this layer's kind (window W or full), per-head sinks (this rank's heads) and RoPE base."""

    def __init__(self, config, layout: HeadLayout, layer_idx: int, dtype: torch.dtype, fused_qkv: bool = True):
        super().__init__(config, layout, layer_idx, dtype, fused_qkv)
        self.layer_type = layer_kinds(config)[layer_idx]
        self.window = int(config.sliding_window) if self.layer_type == SLIDING else None
        self.theta = layer_thetas(config)[layer_idx]          # 0 = NoPE
        self.sinks = nn.Parameter(torch.zeros(layout.q_heads_per_rank, dtype=dtype), requires_grad=False)
        self.gathered_order = gathered_head_order(plan_heads(
            config.num_attention_heads, config.num_key_value_heads, ps.get_tensor_model_parallel_size(),
            layout.head_dim))

    def rotate(self, q: torch.Tensor, k: torch.Tensor, step: DecodeStep):
        """RoPE at this layer's base (the step carries one table per base); NoPE layers are left as they are."""
        if not self.theta:
            return q, k
        return apply_rotary_pos_emb(q, k, step.cos[self.theta], step.sin[self.theta])

    def prefill_attention(self, q, k, v, mask):
        """Causal (windowed) attention over the bucket's fresh k/v, in blocks of queries; `mask` is unused (None:
        right padding sits after every real token, so causality keeps real queries off it)."""
        length = q.shape[2]
        positions = torch.arange(length, device=q.device)
        blocks = []
        for start in range(0, length, QUERY_BLOCK):
            stop = min(start + QUERY_BLOCK, length)
            first = 0 if self.window is None else max(0, start - self.window + 1)   # oldest key the block reaches
            allowed = window_allowed(positions[start:stop], positions[first:stop], self.window)
            blocks.append(sink_attention(q[:, :, start:stop], k[:, :, first:stop], v[:, :, first:stop], allowed,
                                         self.scaling, self.sinks))
        return torch.cat(blocks, dim=2)

    def decode_attention(self, q, k_cache, v_cache, allowed):
        """One query per row over the cache slots read, the matmuls in the cache's dtype (see sink_attention)."""
        return sink_attention(q, k_cache, v_cache, allowed, self.scaling, self.sinks, upcast=False)

    def forward(self, hidden: torch.Tensor, step: DecodeStep, kv_cache: WindowedKVCache) -> torch.Tensor:
        q, k, v = self.project_qkv(hidden)
        q, k = self.rotate(q, k, step)
        if step.positions is None:
            lengths = None if step.attention_mask is None else step.attention_mask.sum(-1)
            kv_cache.update_context_encoding(self.layer_idx, k, v, lengths)
            out = self.prefill_attention(q, k, v, None)
        else:
            kv_cache.update_token_generation(self.layer_idx, k, v, step.positions)
            k_all, v_all = kv_cache.read(self.layer_idx, kv_cache.slots_read(self.layer_idx, step.kv_len))
            allowed = step.mask.get(self.layer_type) if isinstance(step.mask, dict) else None   # the step's, per kind
            if allowed is None:
                allowed = kv_cache.allowed(self.layer_idx, step.positions, step.kv_len, self.window)
            out = self.decode_attention(q, k_all, v_all, allowed)
        batch, _, length, _ = out.shape
        heads = out.transpose(1, 2)                                                   # [B, L, Hq_rank, d]
        if step.capture is not None:   # every TP rank captures, so every rank joins the gather
            step.record(self.layer_idx, "attention_heads", self.all_heads(heads))
        return self.o_proj(heads.reshape(batch, length, -1))

    def all_heads(self, heads: torch.Tensor) -> torch.Tensor:
        """This rank's head outputs [B, L, Hq_rank, d] -> every rank's, in HF's head order, padding dropped:
        [B, L, Hq * d] (HF's o_proj input, which localisation compares to tell a sink error from others)."""
        batch, length, _, dim = heads.shape
        gathered = gather_from_tp_region(heads.reshape(batch, length, -1)).view(batch, length, -1, dim)
        return gathered[:, :, self.gathered_order].reshape(batch, length, -1)
