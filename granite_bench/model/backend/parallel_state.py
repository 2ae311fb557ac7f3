"""Tensor-parallel process group state (the part of neuronx-distributed's `parallel_state` the model needs)."""

from __future__ import annotations

from contextlib import contextmanager

import torch.distributed as dist

_TP_GROUP = None
_TP_SIZE = 1
_TP_RANK = 0


def initialize_model_parallel(tp_degree: int, group=None) -> None:
    """Use `group` (default: the whole world) as the tensor-parallel group. World size 1 needs no process group."""
    global _TP_GROUP, _TP_SIZE, _TP_RANK
    if tp_degree == 1 and not dist.is_initialized():
        _TP_GROUP, _TP_SIZE, _TP_RANK = None, 1, 0
        return
    _TP_GROUP = group if group is not None else dist.group.WORLD
    _TP_SIZE = dist.get_world_size(_TP_GROUP)
    _TP_RANK = dist.get_rank(_TP_GROUP)
    if _TP_SIZE != tp_degree:
        raise RuntimeError(f"process group has {_TP_SIZE} ranks but tp_degree is {tp_degree}")


def destroy_model_parallel() -> None:
    global _TP_GROUP, _TP_SIZE, _TP_RANK
    _TP_GROUP, _TP_SIZE, _TP_RANK = None, 1, 0


def get_tensor_model_parallel_group():
    return _TP_GROUP


def get_tensor_model_parallel_size() -> int:
    return _TP_SIZE


def get_tensor_model_parallel_rank() -> int:
    return _TP_RANK


def set_model_parallel_state(tp_size: int, tp_rank: int = 0, group=None) -> None:
    """Set the TP size and rank without a torch.distributed group: for a backend that owns its own collectives
    (neuronx-distributed traces one SPMD graph for every rank), so only the per-rank shapes are needed here."""
    global _TP_GROUP, _TP_SIZE, _TP_RANK
    if tp_size < 1 or not 0 <= tp_rank < tp_size:
        raise ValueError(f"bad tensor-parallel state: size {tp_size}, rank {tp_rank}")
    _TP_GROUP, _TP_SIZE, _TP_RANK = group, tp_size, tp_rank


@contextmanager
def single_process_state():
    """Within the block the model runs unsharded (TP size 1, no collectives), whatever the process group is: for a
    TP-1 twin built and run inside a rank of a TP group (torchrun's rank 0), which no other rank joins."""
    global _TP_GROUP, _TP_SIZE, _TP_RANK
    saved = _TP_GROUP, _TP_SIZE, _TP_RANK
    _TP_GROUP, _TP_SIZE, _TP_RANK = None, 1, 0
    try:
        yield
    finally:
        _TP_GROUP, _TP_SIZE, _TP_RANK = saved
