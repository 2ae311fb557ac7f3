"""Seeded bugs of a Granite 4.0 hybrid port (Mamba2 + attention), in the pattern of `seeded_bugs.py`: each patches
one plausible porting mistake into the model code while its context is open. Kept apart from `SEEDED_BUGS`
because they only act on `granitemoehybrid` models (the bug matrix runs the dense canary).

`sub_block` says where per-layer localisation must place each one on a hybrid whose first layer is Mamba: the
Mamba bugs in its mixer's gated norm output (the first point inside the mixer HF lets a hook see), the attention
bug in the first attention layer's residual stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable
from unittest import mock

import torch
from torch import nn

from ..model import modeling_granitemoehybrid as hybrid
from ..model.backend import mamba, state_cache
from ..model.backend.decoder import NeuronGraniteBase
from .seeded_bugs import SeededBug


@dataclass(frozen=True)
class HybridBug:
    bug: SeededBug
    sub_block: str        # "gated_norm" (inside the first Mamba layer) or "attention" (the first attention layer)


def groups_tiled_with_repeat():
    """B/C groups expanded to heads with `repeat` (head h reads group h % groups) instead of repeat_interleave
    (head h reads group h // (heads / groups)): wrong whenever n_groups > 1 (llama.cpp's first Mamba2 scan)."""
    def tiled(bc, heads):
        return bc.repeat(*([1] * (bc.dim() - 2)), heads // bc.shape[-2], 1)

    return mock.patch.object(mamba, "heads_of_groups", tiled)


def gate_applied_after_norm():
    """The gated RMSNorm normalises y first and multiplies by silu(gate) after (Mamba2's norm_before_gate=True)
    instead of normalising y * silu(gate)."""
    def forward(self, y, gate):
        grouped = y.float().unflatten(-1, (-1, self.group_size))
        grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight.float() * grouped.flatten(-2) * nn.functional.silu(gate.float())

    return mock.patch.object(mamba.GatedGroupRMSNorm, "forward", forward)


def dt_bias_dropped():
    """dt = softplus(dt) without dt_bias."""
    def time_steps(self, dt):
        dt = nn.functional.softplus(dt.float())
        return dt.clamp(self.time_step_limit[0], self.time_step_limit[1])

    return mock.patch.object(mamba.MambaMixer, "time_steps", time_steps)


def d_skip_dropped():
    """The scan's output lacks the D * x skip term."""
    def output(self, y, x, gate):
        return self.norm(y.flatten(-2), gate)

    return mock.patch.object(mamba.MambaMixer, "output", output)


def nope_layer_given_rope():
    """Attention rotated by RoPE although position_embedding_type says NoPE (granite-4.0-h)."""
    return mock.patch.object(hybrid.NeuronGraniteMoeHybridForCausalLM, "build_rotary", NeuronGraniteBase.build_rotary)


def padding_written_into_state():
    """Context encoding runs the right padding through the scan and the conv window: each shorter row's conv and
    SSM states are those after the bucket's last (padding) position, not after its last real token."""
    original = mamba.MambaMixer.prefill

    def prefill(self, hidden, attention_mask, cache):
        return original(self, hidden, None, cache)

    return mock.patch.object(mamba.MambaMixer, "prefill", prefill)


def conv_state_shifted_by_one():
    """The conv state kept after context encoding is one position early (its last real token left out)."""
    original = mamba.MambaMixer.conv_state_after

    def conv_state_after(self, xbc, lengths):
        return original(self, xbc, (lengths - 1).clamp(min=0))

    return mock.patch.object(mamba.MambaMixer, "conv_state_after", conv_state_after)


def ssm_state_kept_in_bf16():
    """The SSM state is stored in bf16 between steps (a public Neuron port's choice) instead of fp32."""
    original = state_cache.HybridStateCache.__init__

    def init(self, *args, **kwargs):
        kwargs["ssm_state_dtype"] = torch.bfloat16
        original(self, *args, **kwargs)

    return mock.patch.object(state_cache.HybridStateCache, "__init__", init)


def _bug(patch: Callable, bug_class: str, sub_block: str, in_context_encoding: bool = True) -> HybridBug:
    return HybridBug(SeededBug(patch.__name__, bug_class, patch.__doc__, in_context_encoding, patch), sub_block)


HYBRID_SEEDED_BUGS: dict[str, HybridBug] = {b.bug.name: b for b in [
    _bug(groups_tiled_with_repeat, "Mamba group mapping", "gated_norm"),
    _bug(gate_applied_after_norm, "gated norm order", "gated_norm"),
    _bug(dt_bias_dropped, "Mamba time step", "gated_norm"),
    _bug(d_skip_dropped, "Mamba D skip", "gated_norm"),
    _bug(nope_layer_given_rope, "NoPE", "attention"),
    _bug(padding_written_into_state, "recurrent state padding", "gated_norm", in_context_encoding=False),
    _bug(conv_state_shifted_by_one, "conv state", "gated_norm", in_context_encoding=False),
    _bug(ssm_state_kept_in_bf16, "SSM state dtype", "gated_norm", in_context_encoding=False),
]}
