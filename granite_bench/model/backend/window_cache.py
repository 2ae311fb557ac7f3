"""A static KV cache whose sliding-window layers hold a ring of W slots (`sliding_window`), full layers the full
sequence length.

A sliding layer's slot s holds the newest position p with p mod W == s. Context encoding of a row with n real
tokens stores positions max(0, n - W) .. n - 1 (the last W real tokens, not the bucket's padding); token generation
writes position P at slot P mod W, overwriting P - W. Which position each slot holds is a function of the row's
newest position alone (`held_positions`), so the decode mask is built from it, never stored. A sliding layer's memory
is W slots whatever the sequence length.
"""

from __future__ import annotations

import torch

from .kv_cache import KVCacheManager

SLIDING = "sliding_attention"
FULL = "full_attention"


def held_positions(newest: torch.Tensor, slots: int, window: int | None) -> torch.Tensor:
    """newest [B] (each row's newest cached position) -> [B, slots]: the position slot s holds, -1 when empty.

    Full layer (window None): slot s holds position s when s <= newest. Ring of W slots: the newest p <= newest
    with p mod W == s, i.e. newest - ((newest - s) mod W)."""
    slot = torch.arange(slots, device=newest.device)[None, :]             # [1, S]
    newest = newest[:, None]                                                # [B, 1]
    held = slot.expand(newest.shape[0], slots) if window is None else newest - torch.remainder(newest - slot, window)
    return torch.where((held >= 0) & (held <= newest), held, torch.full_like(held, -1))


class WindowedKVCache(KVCacheManager):
    """Per-layer KV caches: `layer_types[i]` "sliding_attention" -> a ring of `window` slots, else the full length."""

    def __init__(self, layer_types: list[str], window: int, batch_size: int, kv_heads: int, sequence_length: int,
                 head_dim: int, dtype: torch.dtype):
        self.layer_types = list(layer_types)
        self.window = int(window)
        lengths = [min(self.window, sequence_length) if kind == SLIDING else sequence_length for kind in layer_types]
        super().__init__(len(layer_types), batch_size, kv_heads, sequence_length, head_dim, dtype, lengths)

    def is_ring(self, layer_idx: int) -> bool:
        return self.layer_types[layer_idx] == SLIDING

    def layer_kind(self, layer_idx: int) -> str:
        """`layer_types[layer_idx]`: a sliding layer's KV cache (`kv_bytes_per_layer_kind`) is W slots at any
        sequence length."""
        return self.layer_types[layer_idx]

    def ring_slot(self, positions: torch.Tensor, layer_idx: int) -> torch.Tensor:
        """The slot of each position in layer `layer_idx`'s cache (position mod W in a ring)."""
        return torch.remainder(positions, self.window) if self.is_ring(layer_idx) else positions

    def update_context_encoding(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor,
                                lengths: torch.Tensor | None = None) -> None:
        """k, v [B, Hkv, L, d] of a right-padded bucket; lengths [B] real tokens per row (None: all L).

        Full layer: cache[:, :, :L]. Ring: slot s <- position n-1 - ((n-1-s) mod W) of each row (its last W real
        tokens); slots no position reaches (n < W) are left as they are and masked by `held_positions`."""
        if not self.is_ring(layer_idx):
            super().update_context_encoding(layer_idx, k, v)
            return
        k_cache, v_cache = self.caches(layer_idx)
        batch, _, length, _ = k.shape
        if lengths is None:
            lengths = torch.full((batch,), length, dtype=torch.long, device=k.device)
        held = held_positions(lengths.to(torch.long) - 1, k_cache.shape[2], self.window)   # [B, W]
        index = held.clamp(min=0)[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])  # [B, Hkv, W, d]
        keep = (held >= 0)[:, None, :, None]
        k_cache.copy_(torch.where(keep, k.gather(2, index), k_cache))
        v_cache.copy_(torch.where(keep, v.gather(2, index), v_cache))

    def update_token_generation(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor,
                                positions: torch.Tensor) -> None:
        """k, v [B, Hkv, 1, d] of position positions[b], written at its slot (position mod W in a ring)."""
        super().update_token_generation(layer_idx, k, v, self.ring_slot(positions, layer_idx))

    def slots_read(self, layer_idx: int, kv_len: int) -> int:
        """Slots token generation reads in a bucket of kv_len positions: a ring never more than its W."""
        return min(kv_len, self.caches(layer_idx)[0].shape[2])

    def allowed(self, layer_idx: int, positions: torch.Tensor, kv_len: int, window: int | None) -> torch.Tensor:
        """Boolean decode mask [B, 1, 1, S] over the slots read: the slot holds a position in (P - window, P]
        (window None: [0, P]) for each row's current position P."""
        slots = self.slots_read(layer_idx, kv_len)
        held = held_positions(positions, slots, self.window if self.is_ring(layer_idx) else None)
        ok = held >= 0
        if window is not None:
            ok = ok & (held > positions[:, None] - window)
        return ok[:, None, None, :]

    def decode_masks(self, positions: torch.Tensor, kv_len: int) -> dict[str, torch.Tensor]:
        """{layer kind: `allowed` of its layers}: every sliding layer reads the same W-slot ring with the same window,
        every full layer the first kv_len slots, so one mask per kind serves all of a step's layers."""
        first = {kind: self.layer_types.index(kind) for kind in dict.fromkeys(self.layer_types)}
        return {kind: self.allowed(idx, positions, kv_len, self.window if self.is_ring(idx) else None)
                for kind, idx in first.items()}
