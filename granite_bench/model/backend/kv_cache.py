"""Static KV cache manager: one (batch, kv_heads_per_rank, sequence_length, head_dim) tensor pair per layer.

Context encoding fills the prefix [0, bucket) of every row; token generation writes one position per row,
at that row's own position. Token generation reads the first `kv_len` (its bucket) positions.
"""

from __future__ import annotations

import torch
from torch import nn


RAW_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}   # an integer dtype per element size


class KVCacheManager(nn.Module):
    def __init__(self, num_layers: int, batch_size: int, kv_heads: int, sequence_length: int, head_dim: int,
                 dtype: torch.dtype, layer_lengths: list[int] | None = None):
        """`layer_lengths`: each layer's number of slots (default `sequence_length` for every layer; a rolling
        window layer holds fewer)."""
        super().__init__()
        self.num_layers = num_layers
        self.layer_lengths = list(layer_lengths) if layer_lengths is not None else [sequence_length] * num_layers
        for layer_idx, length in enumerate(self.layer_lengths):
            shape = (batch_size, kv_heads, length, head_dim)
            self.register_buffer(f"k_cache_{layer_idx}", torch.zeros(shape, dtype=dtype), persistent=False)
            self.register_buffer(f"v_cache_{layer_idx}", torch.zeros(shape, dtype=dtype), persistent=False)

    def caches(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"k_cache_{layer_idx}"), getattr(self, f"v_cache_{layer_idx}")

    def update_context_encoding(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [B, Hkv, L, d] -> cache[:, :, :L]."""
        k_cache, v_cache = self.caches(layer_idx)
        length = k.shape[2]
        k_cache[:, :, :length] = k
        v_cache[:, :, :length] = v

    def update_token_generation(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor,
                                positions: torch.Tensor) -> None:
        """k, v [B, Hkv, 1, d] written at cache[b, :, positions[b]] for each row b: one scatter along the sequence
        dimension (advanced-indexing assignment costs ~10x more per decode step on CPU, for the same copy), on the
        values' raw bits: CPU scatter of bf16/fp16 copies the whole cache twice (~50x an int16 scatter of the same
        bytes, 1-2% of a memory-bound bf16 decode step)."""
        k_cache, v_cache = self.caches(layer_idx)
        index = positions.view(-1, 1, 1, 1).expand_as(k)   # [B, Hkv, 1, d]: row b's position everywhere
        bits = RAW_BITS[k_cache.element_size()]
        k_cache.view(bits).scatter_(2, index, k.view(bits))
        v_cache.view(bits).scatter_(2, index, v.view(bits))

    def read(self, layer_idx: int, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first kv_len positions: k, v [B, Hkv, kv_len, d]."""
        k_cache, v_cache = self.caches(layer_idx)
        return k_cache[:, :, :kv_len], v_cache[:, :, :kv_len]

    def reset(self) -> None:
        for buffer in self.buffers():
            buffer.zero_()

    def layer_kind(self, layer_idx: int) -> str:
        """What kind of attention layer `layer_idx` is ("full_attention" here; a windowed cache has sliding ones)."""
        return "full_attention"

    def kv_bytes_per_layer_kind(self) -> dict[str, dict[str, int]]:
        """{layer kind: {"layers", "slots" (per layer), "bytes_per_slot" (K and V, all rows, this rank's heads),
        "bytes" (all layers of the kind)}} of the KV caches this module holds (layers without a KV cache, e.g. a
        hybrid's Mamba layers, are not counted), read from the buffers allocated."""
        out: dict[str, dict[str, int]] = {}
        for layer_idx in range(self.num_layers):
            if not hasattr(self, f"k_cache_{layer_idx}"):
                continue
            k_cache, v_cache = self.caches(layer_idx)
            batch, heads, slots, dim = k_cache.shape
            per_slot = (k_cache.element_size() + v_cache.element_size()) * batch * heads * dim
            entry = out.setdefault(self.layer_kind(layer_idx),
                                   {"layers": 0, "slots": slots, "bytes_per_slot": per_slot, "bytes": 0})
            entry["layers"] += 1
            entry["slots"] = max(entry["slots"], slots)
            entry["bytes"] += k_cache.nbytes + v_cache.nbytes
        return out
