"""`torchrun` launch (one or several hosts): every process runs the same command; rank 0 becomes the driver
TPRunner, the other ranks serve the calls it broadcasts over the process group and exit when it closes."""

from __future__ import annotations

import os
import time
from datetime import timedelta

from ..model.backend import parallel_state as ps
from .errors import InputError
from .shards import prepare_shards, shard_cache_dir
from .tp_worker import START_TIMEOUT_S, build_rank_runner, serve_spmd


def spmd_world() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when this process was started by torchrun with several ranks."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    if world < 2:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))


def join_torchrun(runner):
    """Under torchrun: join the env:// process group; rank 0 drives, the other ranks serve and then exit."""
    import torch.distributed as dist
    rank, world, local_rank = spmd_world()
    if world != runner.tp_degree:
        raise InputError(f"torchrun started {world} processes but --tp is {runner.tp_degree}: make them equal")
    if not dist.is_initialized():
        dist.init_process_group(runner.backend, init_method="env://",
                                timeout=timedelta(seconds=max(runner.timeout_s, START_TIMEOUT_S)))
    control = dist.new_group(backend="gloo") if runner.backend != "gloo" else None
    started = time.perf_counter()
    if local_rank == 0:  # one converter per host (hosts need not share a cache folder)
        runner.shard_dir = prepare_shards(runner.model_dir, runner.hf_config, runner.neuron_config)
    dist.barrier(group=control)
    runner.shard_dir = shard_cache_dir(runner.model_dir, runner.neuron_config)
    spec = runner.rank_spec(rank, "env://", local=False)
    local = build_rank_runner(spec, local_rank)
    if rank != 0:
        serve_spmd(local, control)
        raise SystemExit(0)
    runner._spmd_local, runner._control_group = local, control
    runner.load_seconds = time.perf_counter() - started
    return runner


def close_spmd(control) -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.broadcast_object_list([("close", (), {})], src=0, group=control)
        ps.destroy_model_parallel()
        dist.destroy_process_group()
