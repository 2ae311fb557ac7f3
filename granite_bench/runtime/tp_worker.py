"""One TP rank: build its GraniteRunner over its shard, then serve the driver's calls (over a pipe when the
CLI spawned it, over the process group under torchrun) until told to close."""

from __future__ import annotations

import os
import pickle
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import torch

from ..model.backend import parallel_state as ps
from ..model.config import NeuronConfig
from ..model.backend.checkpoint import load_rank_shard
from .devices import rank_device
from .graphs import GraphInfo
from .runner import GraniteRunner, load_rank_model

START_TIMEOUT_S = 600.0       # start-up (process start, rendezvous, shard load) on a busy host
WORKER_METHODS = ("context_encode", "token_generate", "generate", "reset", "graph_info", "kv_cache_layout")


class TPRankError(RuntimeError):
    """A TP rank died, hung or failed; the message names it."""


@dataclass
class RankSpec:
    """Everything one rank needs to build its shard of the model (picklable, no transformers objects)."""

    rank: int
    tp: int
    backend: str
    init_method: str
    device: str
    shard_dir: str
    model_dir: str
    config: dict
    neuron_config: dict
    compile: bool
    init: dict
    timeout_s: float
    threads: int


def build_rank_runner(spec: RankSpec, local_rank: int | None = None):
    """This rank's GraniteRunner over its shard (the default process group is already initialised).

    The model's collectives run on their own group whose timeout is `spec.timeout_s`: the default group keeps
    the long start-up timeout (ranks start and rendezvous at different speeds on a busy host).
    """
    import torch.distributed as dist

    start = time.perf_counter()
    group = dist.new_group(ranks=list(range(spec.tp)), timeout=timedelta(seconds=spec.timeout_s))
    ps.initialize_model_parallel(spec.tp, group=group)
    device = rank_device(spec.device, spec.rank if local_rank is None else local_rank)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    config = SimpleNamespace(**spec.config)
    neuron_config = NeuronConfig.from_dict(spec.neuron_config)
    shard = load_rank_shard(Path(spec.shard_dir), spec.rank)
    model = load_rank_model(Path(spec.model_dir), config, neuron_config, device, shard=shard)
    runner = GraniteRunner(model, Path(spec.model_dir), config, neuron_config, device, spec.compile, init=spec.init)
    runner.load_seconds = time.perf_counter() - start
    return runner


def call_runner(runner, method: str, args: tuple, kwargs: dict):
    if method not in WORKER_METHODS:
        raise ValueError(f"TP workers do not serve {method!r}")
    if method == "graph_info":
        return runner.graphs.info()
    return getattr(runner, method)(*args, **kwargs)


def error_reply(err: BaseException) -> tuple:
    """('error', the exception if it pickles, its formatted traceback)."""
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    try:
        payload = pickle.dumps(err)
        pickle.loads(payload)
    except Exception:  # noqa: BLE001 - an exception that does not travel is sent as text only
        payload = None
    return ("error", payload, text)


def worker_main(spec: RankSpec, conn) -> None:
    """Entry point of a spawned rank: join the group, load the shard, then serve calls until 'close'."""
    import torch.distributed as dist
    torch.set_num_threads(spec.threads)
    if spec.backend == "gloo":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one host: talk over loopback
    try:
        if spec.device == "cuda":  # NCCL binds each rank to its GPU before the group forms
            torch.cuda.set_device(rank_device(spec.device, spec.rank))
        dist.init_process_group(spec.backend, init_method=spec.init_method, rank=spec.rank, world_size=spec.tp,
                                timeout=timedelta(seconds=max(spec.timeout_s, START_TIMEOUT_S)))
        runner = build_rank_runner(spec)
        conn.send(("ok", {"load_seconds": runner.load_seconds} if spec.rank == 0 else None, None))
    except BaseException as err:  # noqa: BLE001 - reported to the driver, which names this rank
        conn.send(error_reply(err))
        return
    try:
        while True:
            message = conn.recv()
            if message[0] == "close":
                break
            method, args, kwargs = message
            try:
                result = call_runner(runner, method, args, kwargs)
                if spec.rank == 0:
                    conn.send(("ok", result, runner.graphs.info()))
                else:
                    conn.send(("ok", None, None))
            except Exception as err:  # noqa: BLE001
                conn.send(error_reply(err))
    except (EOFError, KeyboardInterrupt):  # the driver went away
        pass
    finally:
        ps.destroy_model_parallel()
        if dist.is_initialized():
            dist.destroy_process_group()


def finish_spmd_call(local, method, args, kwargs, control, driver=None):
    """Run one call on this rank, then agree on the outcome: every rank learns which rank failed, if any."""
    import torch.distributed as dist
    result, error = None, None
    try:
        result = call_runner(local, method, args, kwargs)
    except Exception as err:  # noqa: BLE001
        error = err
    statuses = [None] * dist.get_world_size()
    dist.all_gather_object(statuses, None if error is None else f"{type(error).__name__}: {error}", group=control)
    if error is not None:
        raise error
    failed = [(r, s) for r, s in enumerate(statuses) if s is not None]
    if failed:
        raise TPRankError(f"TP rank {failed[0][0]} failed during {method}: {failed[0][1]}")
    if driver is not None:
        driver.graphs = GraphInfo(local.graphs.info())
    return result


def serve_spmd(local, control) -> None:
    """A non-zero torchrun rank: run what rank 0 broadcasts until it closes."""
    import torch.distributed as dist
    try:
        while True:
            box = [None]
            dist.broadcast_object_list(box, src=0, group=control)
            method, args, kwargs = box[0]
            if method == "close":
                break
            try:
                finish_spmd_call(local, method, args, kwargs, control)
            except Exception:  # noqa: BLE001 - rank 0 reports it; keep serving while the group is intact
                pass
    finally:
        ps.destroy_model_parallel()
        dist.destroy_process_group()
