"""Mamba2 mixer, Neuron style: HF's `GraniteMoeHybridMambaLayer` on tensor-parallel linears and static states.

    in_proj -> [gate | xBC | dt];  xBC -> depthwise causal conv1d + SiLU -> [x | B | C]
    dt = clamp(softplus(dt + dt_bias), time_step_limit);  A = -exp(A_log)
    y  = SSM scan of x with (dt, A, B, C) + D * x;  out_proj(gated_group_rms_norm(y, gate))

B and C come per group (`n_groups`); head h reads group h // (heads / groups) (repeat_interleave, never repeat).

Two paths, as in a Neuron port:
- context encoding: a chunked scan (`chunk_size` positions at a time, fp32), one chunk after another, so time is
  linear in the prompt and memory is one chunk's [heads, chunk, chunk] decay matrix. Right padding never enters
  the state: dt is 0 at padded positions (no decay, no input), so each row's final state is the state after its
  last real token; the conv state is gathered at each row's own last real tokens.
- token generation: one recurrent step per row, reading and writing the row's conv and SSM state in place.

Tensor parallelism splits the heads: each rank holds heads / tp heads (their in_proj columns, conv channels,
A/D/dt_bias, norm weights, out_proj rows); out_proj's all-reduce completes it. Where tp divides n_groups, a rank
holds n_groups / tp whole groups. Where n_groups divides tp (Granite 4.0-H has one group), the tp / n_groups ranks
of a group each hold a copy of its B/C and a slice of its heads, and the gated norm's per-group mean square is
all-reduced over them (one [tokens, n_groups] fp32 all-reduce per Mamba layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import parallel_state as ps
from .parallel_layers import (ColumnParallelLinear, RowParallelLinear, divide, gather_from_tp_region,
                              reduce_from_tp_region)


@dataclass(frozen=True)
class MambaShape:
    """One rank's Mamba2 sizes."""

    heads: int          # SSM heads on this rank
    head_dim: int
    groups: int         # B/C groups on this rank
    state: int          # d_state
    conv_kernel: int
    chunk: int
    ranks_per_group: int = 1    # > 1: this many ranks share one group (B/C replicated, norm all-reduced)
    group_index: int = 0        # the group this rank's heads belong to, when ranks share one
    total_groups: int = 1

    @property
    def inner(self) -> int:             # this rank's slice of mamba_expand * hidden
        return self.heads * self.head_dim

    @property
    def conv_channels(self) -> int:     # x, then B, then C
        return self.inner + 2 * self.groups * self.state

    @property
    def projection(self) -> int:        # in_proj rows: gate, xBC, dt
        return self.inner + self.conv_channels + self.heads

    @classmethod
    def of(cls, config, tp: int, rank: int = 0) -> "MambaShape":
        heads, head_dim, groups = int(config.mamba_n_heads), int(config.mamba_d_head), int(config.mamba_n_groups)
        sizes = (divide(heads, tp), head_dim)
        rest = (int(config.mamba_d_state), int(config.mamba_d_conv), int(config.mamba_chunk_size))
        if groups % tp == 0:
            return cls(*sizes, groups // tp, *rest, total_groups=groups)
        ranks_per_group = divide(tp, groups)
        return cls(*sizes, 1, *rest, ranks_per_group=ranks_per_group, group_index=rank // ranks_per_group,
                   total_groups=groups)


def heads_of_groups(bc: torch.Tensor, heads: int) -> torch.Tensor:
    """B or C [..., groups, N] -> [..., heads, N]: head h reads group h // (heads / groups)."""
    return bc.repeat_interleave(heads // bc.shape[-2], dim=-2)


def segment_sums(a: torch.Tensor) -> torch.Tensor:
    """a [..., Q] -> [..., Q, Q] with [l, s] = a[s+1] + ... + a[l] for l >= s and -inf above the diagonal.
    Each entry is a masked cumulative sum (not cum[l] - cum[s]), so it stays exact where cum is large."""
    q = a.shape[-1]
    spread = a.unsqueeze(-1).expand(*a.shape, q)                           # [..., k, s] = a[k]
    after_s = torch.ones(q, q, dtype=torch.bool, device=a.device).tril(-1)  # k > s
    sums = spread.masked_fill(~after_s, 0).cumsum(-2)                      # [l, s] = sum over s < k <= l
    causal = torch.ones(q, q, dtype=torch.bool, device=a.device).tril()
    return sums.masked_fill(~causal, float("-inf"))


def chunked_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 chunk: int, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSM over a whole prompt, one chunk at a time, in fp32 (no D skip).

    x [b, L, H, P], dt [b, L, H] (0 at positions that must not touch the state), A [H], B/C [b, L, G, N],
    state [b, H, P, N] at the start (zeros when None) -> y [b, L, H, P], the state after position L - 1."""
    batch, length, heads, head_dim = x.shape
    x, dt, A = x.float(), dt.float(), A.float()
    B, C = heads_of_groups(B.float(), heads), heads_of_groups(C.float(), heads)     # [b, L, H, N]
    if state is None:
        state = x.new_zeros(batch, heads, head_dim, B.shape[-1])
    state = state.float()
    outputs = []
    for start in range(0, length, chunk):
        xc, dtc, Bc, Cc = (t[:, start:start + chunk] for t in (x, dt, B, C))
        a = (dtc * A).transpose(1, 2)                                      # [b, H, Q] log-decay per step
        cum = a.cumsum(-1)                                                 # [b, H, Q]
        xdt = xc * dtc.unsqueeze(-1)                                       # [b, Q, H, P]
        # within the chunk: y[l] = sum_{s <= l} (C_l . B_s) exp(a[s+1] + .. + a[l]) dt_s x_s
        scores = torch.einsum("blhn,bshn->bhls", Cc, Bc) * segment_sums(a).exp()
        y = torch.einsum("bhls,bshp->blhp", scores, xdt)
        # from the state at the chunk's start: y[l] += exp(a[0] + .. + a[l]) C_l . state
        y = y + torch.einsum("blhn,bhpn->blhp", Cc, state) * cum.exp().transpose(1, 2).unsqueeze(-1)
        outputs.append(y)
        # the state at the chunk's end
        to_end = (cum[..., -1:] - cum).exp()                               # [b, H, Q]
        state = state * cum[..., -1].exp()[..., None, None] + torch.einsum("bshn,bhs,bshp->bhpn", Bc, to_end, xdt)
    return torch.cat(outputs, dim=1), state


def recurrent_step(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: x [b, H, P], dt [b, H], A [H], B/C [b, G, N], state [b, H, P, N] -> y [b, H, P] (no D skip) and
    the new state, in fp32."""
    heads = x.shape[1]
    x, dt = x.float(), dt.float()
    B, C = heads_of_groups(B.float(), heads), heads_of_groups(C.float(), heads)     # [b, H, N]
    decay = (dt * A.float()).exp()[..., None, None]                                 # [b, H, 1, 1]
    state = state.float() * decay + (x * dt.unsqueeze(-1)).unsqueeze(-1) * B.unsqueeze(-2)
    return torch.einsum("bhpn,bhn->bhp", state, C), state


class GatedGroupRMSNorm(nn.Module):
    """HF's `GraniteMoeHybridRMSNormGated`: y * silu(gate), then RMS-normalised per group of `group_size`
    channels (fp32), times the weight. The gate is applied before the norm.

    With `ranks_per_group` > 1 this rank holds a slice of one group (`group_index` of `total_groups`): its sum of
    squares goes into that group's slot of a [..., total_groups] vector, all-reduced over the TP ranks."""

    def __init__(self, channels: int, group_size: int, eps: float, dtype: torch.dtype, ranks_per_group: int = 1,
                 group_index: int = 0, total_groups: int = 1):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, dtype=dtype), requires_grad=False)
        self.group_size = group_size
        self.eps = eps
        self.ranks_per_group, self.group_index, self.total_groups = ranks_per_group, group_index, total_groups

    def mean_square(self, grouped: torch.Tensor) -> torch.Tensor:
        """[..., g, channels of a group held here] fp32 -> the mean square of each whole group [..., g, 1]."""
        if self.ranks_per_group == 1:
            return grouped.pow(2).mean(-1, keepdim=True)
        slot = nn.functional.one_hot(torch.tensor(self.group_index, device=grouped.device), self.total_groups)
        partial = grouped.pow(2).sum(-1) * slot                                # [..., total_groups]
        whole = reduce_from_tp_region(partial)[..., self.group_index:self.group_index + 1]
        return (whole / (self.group_size * self.ranks_per_group)).unsqueeze(-1)

    def forward(self, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """y (fp32), gate [..., C] -> fp32 [..., C]."""
        gated = y.float() * nn.functional.silu(gate.float())
        grouped = gated.unflatten(-1, (-1, self.group_size))
        grouped = grouped * torch.rsqrt(self.mean_square(grouped) + self.eps)
        return self.weight.float() * grouped.flatten(-2)


class MambaMixer(nn.Module):
    """One rank's Mamba2 mixer (HF's `GraniteMoeHybridMambaLayer`); states live in the model's static cache."""

    def __init__(self, config, layer_idx: int, dtype: torch.dtype):
        super().__init__()
        tp, rank = ps.get_tensor_model_parallel_size(), ps.get_tensor_model_parallel_rank()
        self.layer_idx = layer_idx
        self.shape = shape = MambaShape.of(config, tp, rank)
        limit = getattr(config, "time_step_limit", None) or (0.0, float("inf"))
        self.time_step_limit = (float(limit[0]), float(limit[1]))
        self.in_proj = ColumnParallelLinear(config.hidden_size, shape.projection * tp,
                                            bias=bool(config.mamba_proj_bias), gather_output=False, dtype=dtype)
        self.conv_weight = nn.Parameter(torch.empty(shape.conv_channels, shape.conv_kernel, dtype=dtype),
                                        requires_grad=False)
        self.conv_bias = (nn.Parameter(torch.zeros(shape.conv_channels, dtype=dtype), requires_grad=False)
                          if config.mamba_conv_bias else None)
        self.A_log = nn.Parameter(torch.empty(shape.heads, dtype=dtype), requires_grad=False)
        self.D = nn.Parameter(torch.empty(shape.heads, dtype=dtype), requires_grad=False)
        self.dt_bias = nn.Parameter(torch.empty(shape.heads, dtype=dtype), requires_grad=False)
        group_size = shape.inner // shape.groups
        self.norm = GatedGroupRMSNorm(shape.inner, group_size, config.rms_norm_eps, dtype, shape.ranks_per_group,
                                      shape.group_index, shape.total_groups)
        self.out_proj = RowParallelLinear(shape.inner * tp, config.hidden_size, bias=bool(config.mamba_proj_bias),
                                          input_is_parallel=True, dtype=dtype)

    # -- pieces -----------------------------------------------------------------------------------------------
    def split_projection(self, hidden: torch.Tensor):
        """hidden [B, L, H] -> gate [B, L, I], xBC [B, L, conv channels], dt [B, L, heads]."""
        s = self.shape
        return self.in_proj(hidden).split([s.inner, s.conv_channels, s.heads], dim=-1)

    def split_conv_output(self, xbc: torch.Tensor):
        """[..., conv channels] -> x [..., heads, P], B [..., groups, N], C [..., groups, N]."""
        s = self.shape
        x, B, C = xbc.split([s.inner, s.groups * s.state, s.groups * s.state], dim=-1)
        return x.unflatten(-1, (s.heads, s.head_dim)), B.unflatten(-1, (s.groups, s.state)), \
            C.unflatten(-1, (s.groups, s.state))

    def time_steps(self, dt: torch.Tensor) -> torch.Tensor:
        """Raw dt [..., heads] -> clamp(softplus(dt + dt_bias), time_step_limit) in fp32."""
        dt = nn.functional.softplus(dt.float() + self.dt_bias.float())
        return dt.clamp(self.time_step_limit[0], self.time_step_limit[1])

    def conv_prefill(self, xbc: torch.Tensor) -> torch.Tensor:
        """xBC [B, L, C] -> silu(causal depthwise conv) [B, L, C]."""
        kernel = self.shape.conv_kernel
        padded = nn.functional.pad(xbc.transpose(1, 2), (kernel - 1, 0))                   # [B, C, K-1+L]
        out = nn.functional.conv1d(padded, self.conv_weight.unsqueeze(1), self.conv_bias,
                                   groups=self.shape.conv_channels)
        return nn.functional.silu(out).transpose(1, 2)

    def conv_state_after(self, xbc: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The conv state each row keeps after its last real token: its last K-1 inputs (zeros before position 0),
        [B, C, K-1]."""
        keep = self.shape.conv_kernel - 1
        padded = nn.functional.pad(xbc.transpose(1, 2), (keep, 0))                         # [B, C, K-1+L]
        index = lengths.view(-1, 1, 1) + torch.arange(keep, device=xbc.device).view(1, 1, -1)  # padded coords
        return padded.gather(2, index.expand(-1, padded.shape[1], -1))

    def conv_step(self, xbc: torch.Tensor, conv_state: torch.Tensor) -> torch.Tensor:
        """xBC [B, C] of one token; shifts it into conv_state [B, C, K-1] in place -> silu(conv) [B, C]."""
        window = torch.cat([conv_state, xbc.unsqueeze(-1).to(conv_state.dtype)], dim=-1)   # [B, C, K]
        conv_state.copy_(window[..., 1:])
        out = (window * self.conv_weight).sum(-1)
        if self.conv_bias is not None:
            out = out + self.conv_bias
        return nn.functional.silu(out)

    def output(self, y: torch.Tensor, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Scan output y [B, L, heads, P] (fp32) + D skip, then the gated norm -> fp32 [B, L, inner]."""
        y = y + x.float() * self.D.float()[:, None]
        return self.norm(y.flatten(-2), gate)

    # -- the two graphs -----------------------------------------------------------------------------------------
    def forward(self, hidden: torch.Tensor, step, cache) -> torch.Tensor:
        """hidden [B, L, H] -> [B, L, H]: context encoding when `step.positions` is None, else one token per row.
        Localisation sees the gated norm's output (all ranks' channels) as sub-block "gated_norm"."""
        if step.positions is None:
            normed = self.prefill(hidden, step.attention_mask, cache)
        else:
            normed = self.decode(hidden, cache)
        if step.capture is not None:   # every TP rank captures, so every rank joins the gather
            step.record(self.layer_idx, "gated_norm", gather_from_tp_region(normed))
        return self.out_proj(normed.to(hidden.dtype))

    def prefill(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, cache) -> torch.Tensor:
        batch, length, _ = hidden.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.long, device=hidden.device)
        gate, xbc, dt = self.split_projection(hidden)
        conv_state, ssm_state = cache.mamba_states(self.layer_idx)
        conv_state.copy_(self.conv_state_after(xbc, attention_mask.sum(-1)))
        x, B, C = self.split_conv_output(self.conv_prefill(xbc))
        dt = self.time_steps(dt) * attention_mask.unsqueeze(-1)          # padding: no decay, no input
        A = -torch.exp(self.A_log.float())
        y, final = chunked_scan(x, dt, A, B, C, self.shape.chunk)
        ssm_state.copy_(final.to(ssm_state.dtype))
        return self.output(y, x, gate)

    def decode(self, hidden: torch.Tensor, cache) -> torch.Tensor:
        gate, xbc, dt = self.split_projection(hidden)                      # [B, 1, ...]
        conv_state, ssm_state = cache.mamba_states(self.layer_idx)
        x, B, C = self.split_conv_output(self.conv_step(xbc[:, 0], conv_state))
        A = -torch.exp(self.A_log.float())
        y, state = recurrent_step(x, self.time_steps(dt[:, 0]), A, B, C, ssm_state)
        ssm_state.copy_(state.to(ssm_state.dtype))
        return self.output(y.unsqueeze(1), x.unsqueeze(1), gate)


# -- checkpoint conversion ----------------------------------------------------------------------------------------

def projection_rows(config, rank: int, tp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of HF's in_proj ([gate | x | B | C | dt], all heads) that rank `rank` of `tp` holds, in its own order
    [gate_r | x_r | B_r | C_r | dt_r], and the rows of HF's conv1d ([x | B | C]) it holds. B/C: the rank's own
    groups, or a copy of the one group its heads read when ranks share a group."""
    heads, head_dim = int(config.mamba_n_heads), int(config.mamba_d_head)
    groups, state = int(config.mamba_n_groups), int(config.mamba_d_state)
    inner, bc = heads * head_dim, groups * state
    per_inner, per_heads = divide(inner, tp), divide(heads, tp)
    shape = MambaShape.of(config, tp, rank)
    per_bc = shape.groups * state
    bc_block = rank if shape.ranks_per_group == 1 else shape.group_index   # which per_bc rows of B (and of C)

    def part(start: int, size: int, index: int = rank) -> torch.Tensor:
        return torch.arange(start + index * size, start + (index + 1) * size)

    x = part(inner, per_inner)
    B, C = part(2 * inner, per_bc, bc_block), part(2 * inner + bc, per_bc, bc_block)
    rows = torch.cat([part(0, per_inner), x, B, C, part(2 * inner + 2 * bc, per_heads)])
    return rows, torch.cat([x, B, C]) - inner


def convert_mamba(hf, prefix: str, config, rank: int, tp: int) -> dict[str, torch.Tensor]:
    """HF `GraniteMoeHybridMambaLayer` tensors under `prefix` -> this rank's MambaMixer state dict."""
    rows, conv_rows = projection_rows(config, rank, tp)
    heads = divide(int(config.mamba_n_heads), tp)
    inner = divide(int(config.mamba_n_heads) * int(config.mamba_d_head), tp)
    head_part, inner_part = slice(rank * heads, (rank + 1) * heads), slice(rank * inner, (rank + 1) * inner)
    out = {"in_proj.weight": hf[f"{prefix}.in_proj.weight"][rows],
           "conv_weight": hf[f"{prefix}.conv1d.weight"].squeeze(1)[conv_rows],
           "A_log": hf[f"{prefix}.A_log"][head_part], "D": hf[f"{prefix}.D"][head_part],
           "dt_bias": hf[f"{prefix}.dt_bias"][head_part], "norm.weight": hf[f"{prefix}.norm.weight"][inner_part],
           "out_proj.weight": hf[f"{prefix}.out_proj.weight"][:, inner_part]}
    if f"{prefix}.in_proj.bias" in hf:
        out["in_proj.bias"] = hf[f"{prefix}.in_proj.bias"][rows]
    if f"{prefix}.conv1d.bias" in hf:
        out["conv_bias"] = hf[f"{prefix}.conv1d.bias"][conv_rows]
    if f"{prefix}.out_proj.bias" in hf:   # the row-parallel bias is added once, after the all-reduce
        out["out_proj.bias"] = hf[f"{prefix}.out_proj.bias"]
    return out
