"""Mixture of experts, Neuron style: a top-k router and fused experts sharded over the TP ranks.

Routing as HF's `GraniteMoeTopKRouter`: router logits in fp32, top-k on the raw logits, softmax over the k chosen,
cast back to the model's dtype; no jitter, no capacity, no dropped tokens.

Sharding (neuronx-distributed's MoE layout): every expert's intermediate dimension is split over the ranks, so any
number of experts works with any TP degree that divides the intermediate size; with expert parallelism
(`moe_ep_degree` N), the TP ranks form N groups, group g holds experts [g·E/N, (g+1)·E/N) and splits their
intermediate dimension over its tp/N ranks. Either way each rank's output is a partial sum over its experts and its
intermediate slice, and one all-reduce over the TP group completes it.

Execution, eager: the (token, expert) assignments are sorted by expert and each expert that was chosen runs once, as
one matrix product over all the tokens routed to it (prefill: a grouped matmul; decode at batch 1: the k chosen
experts' weights, read in place). Weight bytes read per step therefore grow with the number of distinct experts
chosen, never with E, and there is no loop over tokens.

Execution inside a traced static graph (torch.compile here; a Neuron trace): which experts run cannot depend on the
data, so the two static formulations NxDI uses take over: decode (few tokens) gathers each token's k experts'
weights ([T, k, ...], selective loading), context encoding runs every expert on every token and weights the outputs
by the dense routing matrix (compute E/k times the work, no weight copies).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from . import parallel_state as ps
from .checkpoint import convert_fused_gated_mlp, first_present
from .decoder import GraniteDecoderLayerBase
from .mlp import GatedMLP
from .parallel_layers import divide, linear, reduce_from_tp_region


# Up to this many (token, expert) assignments a static graph gathers the chosen experts' weights; above it (prefill)
# it runs every expert on every token instead of copying weights per assignment.
SELECTIVE_MAX_ASSIGNMENTS = 64


def expert_slice(rank: int, tp: int, ep: int, num_experts: int) -> tuple[int, int, int, int]:
    """(first expert, experts held, intermediate slice index, slices) of `rank` among `tp` ranks with `ep` groups."""
    ranks_per_group = divide(tp, ep)
    per_group = divide(num_experts, ep)
    group, slice_index = divmod(rank, ranks_per_group)
    return group * per_group, per_group, slice_index, ranks_per_group


class TopKRouter(nn.Module):
    """x [T, H] -> (top-k weights [T, k] in x's dtype, top-k expert index [T, k]); replicated on every rank."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, dtype: torch.dtype):
        super().__init__()
        self.top_k = top_k
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size, dtype=dtype), requires_grad=False)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight).float()              # [T, E] fp32

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top_logits, index = self.logits(x).topk(self.top_k, dim=-1)      # top-k of the raw logits
        return torch.softmax(top_logits, dim=-1).to(x.dtype), index      # softmax over the k chosen only


def routing_matrix(weights: torch.Tensor, index: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Top-k weights [T, k] and index [T, k] -> dense routing [T, E] fp32 (zero for experts not chosen)."""
    dense = torch.zeros(*index.shape[:-1], num_experts, dtype=torch.float32, device=index.device)
    return dense.scatter(-1, index, weights.float())


class FusedExperts(nn.Module):
    """This rank's experts: gate_up_proj [E_r, 2·I_r, H] (each expert's gate rows, then its up rows) and
    down_proj [E_r, H, I_r]; forward returns the partial sum this rank holds, all-reduced over the TP group."""

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int, dtype: torch.dtype,
                 ep_degree: int = 1):
        super().__init__()
        tp, rank = ps.get_tensor_model_parallel_size(), ps.get_tensor_model_parallel_rank()
        self.first_expert, local, _, slices = expert_slice(rank, tp, ep_degree, num_experts)
        inter = divide(intermediate_size, slices)
        self.gate_up_proj = nn.Parameter(torch.empty(local, 2 * inter, hidden_size, dtype=dtype), requires_grad=False)
        self.down_proj = nn.Parameter(torch.empty(local, hidden_size, inter, dtype=dtype), requires_grad=False)

    def use_input_major_layout(self) -> None:
        """Keep every expert's values and shapes but lay each [out, in] matrix out [in, out] in memory. On CPU in
        fp32 a one-row product streams such a matrix about twice as fast for down_proj's short rows (512:
        9.6 -> 18.9 GB/s, CPU time, AMD EPYC) and 1.4x for gate_up_proj's (1536), while a 128-token matmul
        keeps its speed (down) or loses ~17% (gate_up); decode is what is memory-bound. bf16 gains nothing this
        way, so only fp32 uses it (as the LM head)."""
        for param in (self.gate_up_proj, self.down_proj):
            param.data = param.data.transpose(1, 2).contiguous().transpose(1, 2)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """x [T, H], weights/index [T, k] -> [T, H]: sum over each token's k experts of weight · expert(x)."""
        if torch.compiler.is_compiling():   # a static graph: no data-dependent choice of experts
            static = self.selected_experts if x.shape[0] * index.shape[-1] <= SELECTIVE_MAX_ASSIGNMENTS else self.all_experts
            return reduce_from_tp_region(static(x, weights, index))
        return reduce_from_tp_region(self.grouped(x, weights, index))

    def grouped(self, x: torch.Tensor, weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Eager: each chosen expert once, over the tokens routed to it (this rank's partial sum)."""
        top_k = index.shape[-1]
        flat = index.reshape(-1)                                          # [T·k] expert of each assignment
        order = flat.argsort(stable=True)                                 # assignments grouped by expert
        token_of = order // top_k                                         # [T·k] token of each sorted assignment
        weight_of = weights.reshape(-1)[order]                            # [T·k]
        experts, counts = torch.unique_consecutive(flat[order], return_counts=True)
        out = torch.zeros_like(x)
        start = 0
        for expert, count in zip(experts.tolist(), counts.tolist()):
            local = expert - self.first_expert
            if 0 <= local < self.gate_up_proj.shape[0]:
                rows = token_of[start:start + count]                     # [n] tokens routed to this expert
                out.index_add_(0, rows, self.expert(local, x[rows]) * weight_of[start:start + count, None])
            start += count
        return out

    def local_routing(self, weights: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index among this rank's experts, clamped, [T, k]; weights zeroed where another rank holds the expert)."""
        local = index - self.first_expert
        held = (local >= 0) & (local < self.gate_up_proj.shape[0])
        return local.clamp(0, self.gate_up_proj.shape[0] - 1), weights * held

    def selected_experts(self, x: torch.Tensor, weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Static: each token's k experts' weights gathered ([T, k, 2I, H]) and applied (this rank's partial sum)."""
        local, weights = self.local_routing(weights, index)
        gate, up = torch.einsum("th,tkih->tki", x, self.gate_up_proj[local]).chunk(2, dim=-1)   # [T, k, I] each
        y = torch.einsum("tki,tkhi->tkh", nn.functional.silu(gate) * up, self.down_proj[local])  # [T, k, H]
        return (y * weights[..., None]).sum(dim=1)

    def all_experts(self, x: torch.Tensor, weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Static: every local expert on every token, weighted by the dense routing (zero where not chosen)."""
        local, weights = self.local_routing(weights, index)
        dense = torch.zeros(x.shape[0], self.gate_up_proj.shape[0], dtype=x.dtype, device=x.device)
        dense = dense.scatter_add(1, local, weights)                                             # [T, E_r]
        gate, up = torch.einsum("th,eih->tei", x, self.gate_up_proj).chunk(2, dim=-1)            # [T, E_r, I]
        y = torch.einsum("tei,ehi->teh", nn.functional.silu(gate) * up, self.down_proj)          # [T, E_r, H]
        return (y * dense[..., None]).sum(dim=1)

    def expert(self, local: int, x: torch.Tensor) -> torch.Tensor:
        """One expert's gated MLP on its tokens x [n, H] -> [n, H] (this rank's intermediate slice)."""
        gate, up = linear(x, self.gate_up_proj[local]).chunk(2, dim=-1)
        return linear(nn.functional.silu(gate) * up, self.down_proj[local])


class GraniteMoE(nn.Module):
    """HF's `block_sparse_moe`: router, then the experts on the routed tokens."""

    def __init__(self, config, dtype: torch.dtype, ep_degree: int = 1):
        super().__init__()
        self.num_experts = config.num_local_experts
        self.router = TopKRouter(config.hidden_size, config.num_local_experts, config.num_experts_per_tok, dtype)
        self.experts = FusedExperts(config.hidden_size, config.intermediate_size, config.num_local_experts, dtype,
                                    ep_degree)

    def forward(self, x: torch.Tensor, step, layer_idx: int) -> torch.Tensor:
        """x [B, L, H] -> [B, L, H]; records the router's logits, the routing and the experts' output for
        localisation."""
        batch, length, hidden = x.shape
        flat = x.reshape(-1, hidden)                                      # [T, H]
        weights, index = self.router(flat)
        if step.capture is not None:
            step.record(layer_idx, "router_logits", self.router.logits(flat).view(batch, length, -1))
            step.record(layer_idx, "router", routing_matrix(weights, index, self.num_experts).view(batch, length, -1))
        out = self.experts(flat, weights, index).view(batch, length, hidden)
        step.record(layer_idx, "experts", out)
        return out


def convert_moe(hf: Mapping[str, torch.Tensor], prefix: str, rank: int, tp: int, ep: int) -> dict[str, torch.Tensor]:
    """HF `block_sparse_moe` tensors under `prefix` -> this rank's router, gate_up_proj and down_proj.

    Reads either layout: the checkpoint's (`router.layer.weight`, `input_linear.weight` [E, 2I, H] gate then up,
    `output_linear.weight` [E, H, I]) or transformers 5's in-memory names (`router.weight`,
    `experts.gate_up_proj`, `experts.down_proj`)."""
    gate_up = first_present(hf, f"{prefix}.input_linear.weight", f"{prefix}.experts.gate_up_proj")
    down = first_present(hf, f"{prefix}.output_linear.weight", f"{prefix}.experts.down_proj")
    first, local, slice_index, slices = expert_slice(rank, tp, ep, gate_up.shape[0])
    gate, up = gate_up[first:first + local].chunk(2, dim=1)              # [E_r, I, H] each
    inter = divide(gate.shape[1], slices)
    part = slice(slice_index * inter, (slice_index + 1) * inter)
    return {"router.weight": first_present(hf, f"{prefix}.router.layer.weight", f"{prefix}.router.weight"),
            "experts.gate_up_proj": torch.cat([gate[:, part], up[:, part]], dim=1),
            "experts.down_proj": down[first:first + local, :, part]}


class ExpertsAndSharedMLPLayer(GraniteDecoderLayerBase):
    """Granite MoE-shared's decoder layer: the routed experts plus, when `shared_intermediate_size` > 0, a shared gated
    MLP on the same normed input (its output recorded as "shared_mlp" for localisation). Architectures differ only in
    their attention class (`attention_class`)."""

    def __init__(self, config, layout, layer_idx: int, neuron_config):
        super().__init__(config, layout, layer_idx, neuron_config)
        self.block_sparse_moe = GraniteMoE(config, neuron_config.dtype, neuron_config.moe_ep_degree)
        shared = int(getattr(config, "shared_intermediate_size", 0) or 0)
        self.shared_mlp = GatedMLP(config.hidden_size, shared, neuron_config.dtype) if shared else None

    def feed_forward(self, normed: torch.Tensor, step) -> torch.Tensor:
        out = self.block_sparse_moe(normed, step, self.layer_idx)
        if self.shared_mlp is not None:
            shared_out = self.shared_mlp(normed)
            step.record(self.layer_idx, "shared_mlp", shared_out)
            out = out + shared_out
        return out


def convert_experts_and_shared_mlp(hf: Mapping[str, torch.Tensor], src: str, config, rank: int, tp: int,
                                   ep: int) -> dict[str, torch.Tensor]:
    """A layer's `block_sparse_moe` (either expert layout) and, when the config has one, its fused `shared_mlp`."""
    out = {f"block_sparse_moe.{k}": v for k, v in convert_moe(hf, f"{src}.block_sparse_moe", rank, tp, ep).items()}
    if int(getattr(config, "shared_intermediate_size", 0) or 0):
        out.update({f"shared_mlp.{k}": v for k, v in convert_fused_gated_mlp(hf, f"{src}.shared_mlp", rank, tp).items()})
    return out
