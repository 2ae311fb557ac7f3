"""Which query and KV heads each tensor-parallel rank holds (neuronx-distributed's GQA sharding rules).

- KV heads divisible by tp: each rank keeps whole groups (kv/tp KV heads with their query heads).
- tp divisible by KV heads (fewer KV heads than ranks): each KV head is replicated to tp/kv ranks and its
  query group is split between them, padded with empty query heads when the group does not split evenly.
- otherwise: converted to MHA (every query head gets its own copy of its KV head), query heads padded to a
  multiple of tp.
A padded query head (None) has zero q weights and zero o_proj columns, so it contributes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_TP_DEGREE = 64


class TPDegreeError(ValueError):
    """The model cannot be sharded over this many ranks."""


@dataclass(frozen=True)
class HeadPlan:
    strategy: str                           # "grouped" | "replicate_kv" | "mha"
    q_heads: list[list[int | None]]         # per rank, original query head index or None for padding
    kv_heads: list[list[int]]               # per rank, original KV head index
    head_dim: int

    @property
    def q_heads_per_rank(self) -> int:
        return len(self.q_heads[0])

    @property
    def kv_heads_per_rank(self) -> int:
        return len(self.kv_heads[0])


def plan_heads(num_q: int, num_kv: int, tp: int, head_dim: int) -> HeadPlan:
    validate_tp_degree(num_q, num_kv, tp)
    group = num_q // num_kv
    if num_kv % tp == 0:
        kv_per_rank = num_kv // tp
        kv = [list(range(r * kv_per_rank, (r + 1) * kv_per_rank)) for r in range(tp)]
        q = [[h * group + g for h in kvs for g in range(group)] for kvs in kv]
        return HeadPlan("grouped", q, kv, head_dim)
    if tp % num_kv == 0:
        ranks_per_kv = tp // num_kv
        part = -(-group // ranks_per_kv)
        q, kv = [], []
        for r in range(tp):
            kv_head, piece = divmod(r, ranks_per_kv)
            members = [kv_head * group + g for g in range(piece * part, (piece + 1) * part)]
            q.append([m if m < (kv_head + 1) * group else None for m in members])
            kv.append([kv_head])
        return HeadPlan("replicate_kv", q, kv, head_dim)
    per_rank = -(-num_q // tp)
    q = [[h if h < num_q else None for h in range(r * per_rank, (r + 1) * per_rank)] for r in range(tp)]
    kv = [[(h if h is not None else 0) // group for h in heads] for heads in q]
    return HeadPlan("mha", q, kv, head_dim)


def gathered_head_order(plan: HeadPlan) -> list[int]:
    """Where HF's query heads 0..Hq-1 sit among every rank's heads concatenated in rank order (padding skipped)."""
    held = [head for rank in plan.q_heads for head in rank]
    return sorted((i for i, head in enumerate(held) if head is not None), key=lambda i: held[i])


def validate_tp_degree(num_q: int, num_kv: int, tp: int) -> None:
    """Refuse, in one line, a TP degree the model cannot use."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise TPDegreeError(f"--tp must be a positive integer, got {tp!r}")
    if tp > MAX_TP_DEGREE:
        raise TPDegreeError(f"--tp {tp} is above the supported maximum of {MAX_TP_DEGREE}")
    if num_q < 1 or num_kv < 1:
        raise TPDegreeError(f"config has {num_q} attention heads and {num_kv} KV heads: both must be positive")
    if num_q % num_kv:
        raise TPDegreeError(f"config has {num_q} attention heads, not a multiple of {num_kv} KV heads")
    if tp > num_q:
        raise TPDegreeError(f"--tp {tp} exceeds the {num_q} attention heads: choose --tp <= {num_q}")
