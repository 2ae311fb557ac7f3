"""Seeded bugs of the sliding-window Granites (`granite_swa`, `granitemoe_swa`): porting mistakes in the window,
the attention sinks, the ring KV cache and the per-layer RoPE bases, each patched into the module that keeps that
concern (same `SeededBug` shape as `seeded_bugs.SEEDED_BUGS`, which the dense canary's bug matrix runs; these need
a sliding-window model, so they are a table of their own). Parity must FAIL under each and name `attention`.
"""

from __future__ import annotations

from unittest import mock

import torch

from ..model.backend import sliding_attention, window_cache
from .seeded_bugs import SeededBug

Attention = sliding_attention.SlidingWindowAttention


def window_off_by_one():
    """A sliding layer's query i also sees key i - W (the window taken as [i - W, i], W + 1 keys)."""
    def allowed(q_pos, k_pos, window):
        ok = k_pos[None, :] <= q_pos[:, None]
        if window is not None:
            ok = ok & (k_pos[None, :] >= q_pos[:, None] - window)
        return ok[None, None]

    return mock.patch.object(sliding_attention, "window_allowed", allowed)


def sinks_dropped():
    """The learned sinks are ignored: plain softmax attention (no extra logit in the denominator)."""
    original = sliding_attention.sink_attention

    def attend(q, k, v, allowed, scaling, sinks, upcast=True):
        return original(q, k, v, allowed, scaling, None, upcast)

    return mock.patch.object(sliding_attention, "sink_attention", attend)


def sinks_added_after_normalisation():
    """exp(sink) added to the denominator after the softmax has normalised the scores to 1: out = softmax(s)·V /
    (1 + exp(sink)) instead of exp(s)·V / (sum exp(s) + exp(sink))."""
    original = sliding_attention.sink_attention

    def attend(q, k, v, allowed, scaling, sinks, upcast=True):
        out = original(q, k, v, allowed, scaling, None, upcast)
        return (out.float() * torch.sigmoid(-sinks.float()).view(1, -1, 1, 1)).to(out.dtype)

    return mock.patch.object(sliding_attention, "sink_attention", attend)


def ring_index_not_mod_w():
    """Token generation's ring slot is not taken mod W: past the window every new token lands in the last slot
    (clamped), while the mask still believes slot s holds the newest position p with p mod W == s."""
    def ring_slot(self, positions, layer_idx):
        return positions.clamp(max=self.window - 1) if self.is_ring(layer_idx) else positions

    return mock.patch.object(window_cache.WindowedKVCache, "ring_slot", ring_slot)


def nope_layer_rotated():
    """A NoPE layer (layer_rope_theta 0) is rotated anyway, with the model's first RoPE table."""
    def rotate(self, q, k, step):
        theta = self.theta or next(iter(step.cos))
        return sliding_attention.apply_rotary_pos_emb(q, k, step.cos[theta], step.sin[theta])

    return mock.patch.object(Attention, "rotate", rotate)


def one_theta_for_all_layers():
    """Every rotated layer uses one RoPE base (the first table) instead of its own layer_rope_theta."""
    def rotate(self, q, k, step):
        if not self.theta:
            return q, k
        theta = next(iter(step.cos))
        return sliding_attention.apply_rotary_pos_emb(q, k, step.cos[theta], step.sin[theta])

    return mock.patch.object(Attention, "rotate", rotate)


def sliding_layer_full_attention():
    """A sliding layer attends over every earlier key in context encoding (its window ignored)."""
    original = Attention.prefill_attention

    def prefill(self, q, k, v, mask):
        kept, self.window = self.window, None
        try:
            return original(self, q, k, v, mask)
        finally:
            self.window = kept

    return mock.patch.object(Attention, "prefill_attention", prefill)


def _bug(name: str, bug_class: str, patch, in_context_encoding: bool) -> SeededBug:
    return SeededBug(name, bug_class, patch.__doc__, in_context_encoding, patch)


SWA_SEEDED_BUGS: dict[str, SeededBug] = {bug.name: bug for bug in [
    _bug("window_off_by_one", "sliding window", window_off_by_one, True),
    _bug("sinks_dropped", "attention sinks", sinks_dropped, True),
    _bug("sinks_added_after_normalisation", "attention sinks", sinks_added_after_normalisation, True),
    _bug("ring_index_not_mod_w", "KV cache position", ring_index_not_mod_w, False),
    _bug("nope_layer_rotated", "RoPE", nope_layer_rotated, True),
    _bug("one_theta_for_all_layers", "RoPE", one_theta_for_all_layers, True),
    _bug("sliding_layer_full_attention", "sliding window", sliding_layer_full_attention, True),
]}
