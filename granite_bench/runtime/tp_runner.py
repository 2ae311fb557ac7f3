"""Tensor parallelism on torch.distributed: the driver of one process per TP rank, driven SPMD.

Two launch modes, one runner contract (`TPRunner`):

- one host, `--tp N`: the CLI process is the driver. It converts the checkpoint once into per-rank shards
  (shards.py), starts N worker processes (tp_worker.py; gloo on CPU, NCCL on CUDA), sends every call to every rank
  over a pipe, and returns rank 0's answer. A rank that dies, fails or stops answering ends the run with an error
  naming it; `close()` always stops the workers.
- `torchrun` (one or several hosts; torchrun.py): every process runs the same command. Rank 0 returns a driver
  `TPRunner` that broadcasts each call over the process group; the other ranks serve those calls and exit when
  rank 0 closes.

Collectives run under a bounded process-group timeout, so a rank waiting on a dead or hung peer fails instead of
waiting for ever; the driver's own deadline is that timeout plus a grace period.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import tempfile
import time
import weakref
from multiprocessing.connection import wait
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable

import torch

from ..model.config import NeuronConfig
from ..model.auto import parallel_plan
from .devices import backend_for, check_devices
from .graphs import GraphInfo
from .shards import prepare_shards
from .torchrun import close_spmd, join_torchrun, spmd_world
from .tp_worker import START_TIMEOUT_S, RankSpec, TPRankError, finish_spmd_call, worker_main

EAGER_TIMEOUT_S = 120.0        # a collective waiting longer than this on a peer fails (eager graphs)
COMPILE_TIMEOUT_S = 1800.0     # compiled graphs: peers may still be compiling their copy of a graph
GRACE_S = 15.0                 # how long the driver waits for the other ranks once one has failed or died
TIMEOUT_ENV = "GRANITE_BENCH_TP_TIMEOUT"
START_METHOD_ENV = "GRANITE_BENCH_TP_START_METHOD"


def collective_timeout(compile: bool) -> float:
    """Seconds a collective may wait for its peers: GRANITE_BENCH_TP_TIMEOUT, else a default per mode."""
    value = os.environ.get(TIMEOUT_ENV)
    if value:
        try:
            seconds = float(value)
        except ValueError:
            raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {value!r}") from None
        if seconds <= 0:
            raise ValueError(f"{TIMEOUT_ENV} must be positive, got {value!r}")
        return seconds
    return COMPILE_TIMEOUT_S if compile else EAGER_TIMEOUT_S


def threads_per_rank(tp: int) -> int:
    """Split the host's cores between the ranks (at least one thread each)."""
    return max(1, (os.cpu_count() or 1) // tp)


def config_namespace(hf_config) -> SimpleNamespace:
    """The HF config as plain attributes: workers build the model from it without importing transformers."""
    data = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(vars(hf_config))
    return SimpleNamespace(**data)


def signal_name(exitcode: int | None) -> str:
    if exitcode is None or exitcode >= 0:
        return f"exit code {exitcode}"
    try:
        return f"signal {signal.Signals(-exitcode).name}"
    except ValueError:
        return f"signal {-exitcode}"


def mp_context():
    """forkserver (workers fork from a server that has imported torch once: cheap start-up), spawn elsewhere."""
    import multiprocessing
    method = os.environ.get(START_METHOD_ENV) or (
        "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
    ctx = torch.multiprocessing.get_context(method)
    if method == "forkserver":
        # torch._dynamo: model loading imports it (~1 s of imports per rank otherwise).
        ctx.set_forkserver_preload(["granite_bench.runtime.tp_worker", "torch._dynamo"])
    return ctx


def shutdown(processes, conns, patience_s: float = 5.0) -> None:
    """Ask the workers to stop, then terminate and kill whatever is left (idempotent, never raises)."""
    for conn in conns:
        try:
            conn.send(("close",))
        except Exception:  # noqa: BLE001 - a dead worker's pipe is closed
            pass
    deadline = time.monotonic() + patience_s
    for proc in processes:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
            proc.join(min(2.0, patience_s))
        if proc.is_alive():  # a stopped or wedged process ignores SIGTERM
            proc.kill()
            proc.join(2.0)
    for conn in conns:
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass


class TPRunner:
    """Drives tp_degree ranks SPMD behind the runner contract (contract.Runner); rank 0 answers."""

    def __init__(self, model_dir: Path, hf_config, neuron_config: NeuronConfig, device: str, compile: bool,
                 init: dict, timeout_s: float):
        self.model_dir = Path(model_dir)
        self.hf_config = hf_config
        self.neuron_config = neuron_config
        self.device = device
        self.compile = compile
        self.init = init
        self.timeout_s = timeout_s
        self.grace_s = min(GRACE_S, timeout_s)
        self.tp_degree = neuron_config.tp_degree
        self.backend = backend_for(device)
        self.reduce_dtype = "float32"
        self.load_seconds = 0.0
        self.rank0_load_seconds: float | None = None
        self.shard_dir: Path | None = None
        self.graphs = GraphInfo({"compile": compile})
        self.processes: list = []
        self.conns: list = []
        self.closed = False
        self._spmd_local = None       # torchrun mode: rank 0's own GraniteRunner
        self._control_group = None
        self._rundir: Path | None = None
        self._finalizer = None

    # -- start ---------------------------------------------------------------------------------------------------
    @classmethod
    def start(cls, model_dir: Path, hf_config, neuron_config: NeuronConfig, device: str = "cpu",
              compile: bool = False, timeout_s: float | None = None):
        """Start the ranks (or, under torchrun, join them) and load every shard; returns the driver runner."""
        from ..reference.weights import read_init
        tp = neuron_config.tp_degree
        parallel_plan(hf_config, tp, neuron_config.moe_ep_degree)  # a bad TP degree is refused before any process starts
        timeout_s = float(timeout_s) if timeout_s is not None else collective_timeout(compile)
        runner = cls(model_dir, hf_config, neuron_config, device, compile, read_init(model_dir), timeout_s)
        if spmd_world() is not None:
            return join_torchrun(runner)
        check_devices(device, tp)
        started = time.perf_counter()
        runner.shard_dir = prepare_shards(model_dir, hf_config, neuron_config)
        runner._spawn()
        runner.load_seconds = time.perf_counter() - started
        return runner

    def rank_spec(self, rank: int, init_method: str, local: bool = True) -> RankSpec:
        return RankSpec(rank=rank, tp=self.tp_degree, backend=self.backend, init_method=init_method,
                        device=self.device, shard_dir=str(self.shard_dir), model_dir=str(self.model_dir),
                        config=config_namespace(self.hf_config).__dict__, neuron_config=self.neuron_config.to_dict(),
                        compile=self.compile, init=self.init, timeout_s=self.timeout_s,
                        threads=threads_per_rank(self.tp_degree) if local else torch.get_num_threads())

    def _spawn(self) -> None:
        ctx = mp_context()
        self._rundir = Path(tempfile.mkdtemp(prefix="granite-bench-tp-"))
        init_method = f"file://{self._rundir / 'rendezvous'}"
        for rank in range(self.tp_degree):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(self.rank_spec(rank, init_method), child),
                               name=f"granite-bench-tp-rank{rank}", daemon=True)
            proc.start()
            child.close()
            self.processes.append(proc)
            self.conns.append(parent)
        self._finalizer = weakref.finalize(self, _cleanup, list(self.processes), list(self.conns), self._rundir)
        try:
            info = self._collect("start-up", max(self.timeout_s, START_TIMEOUT_S) + self.grace_s)
        except BaseException:
            self.close()
            raise
        self.graphs = GraphInfo({"compile": self.compile})
        self.rank0_load_seconds = (info or {}).get("load_seconds")

    # -- calls -----------------------------------------------------------------------------------------------------
    def _call(self, method: str, *args, **kwargs):
        if self.closed:
            raise TPRankError(f"the TP runner is closed: cannot run {method}")
        if self._spmd_local is not None:
            return self._call_spmd(method, args, kwargs)
        for rank, conn in enumerate(self.conns):
            try:
                conn.send((method, args, kwargs))
            except (BrokenPipeError, OSError):
                self._fail(f"TP rank {rank} is gone ({signal_name(self.processes[rank].exitcode)}) "
                           f"before {method}")
        return self._collect(method, self.timeout_s + self.grace_s)

    def _collect(self, what: str, timeout_s: float):
        """Wait for every rank's reply; raise naming the rank that died, hung or failed."""
        pending = set(range(self.tp_degree))
        replies: dict[int, tuple] = {}
        dead: dict[int, int | None] = {}
        started = time.monotonic()
        deadline = started + timeout_s
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            waiting = {self.conns[r]: r for r in pending}
            sentinels = {self.processes[r].sentinel: r for r in pending}
            for ready in wait(list(waiting) + list(sentinels), timeout=remaining):
                rank = waiting.get(ready, sentinels.get(ready))
                if rank not in pending:
                    continue
                conn = self.conns[rank]
                if ready is conn or conn.poll():
                    try:
                        replies[rank] = conn.recv()
                    except (EOFError, OSError):
                        self.processes[rank].join(1.0)
                        dead[rank] = self.processes[rank].exitcode
                else:
                    self.processes[rank].join(1.0)
                    dead[rank] = self.processes[rank].exitcode
                pending.discard(rank)
                if rank in dead or replies[rank][0] == "error":
                    deadline = min(deadline, time.monotonic() + self.grace_s)
        failed = {r: reply for r, reply in replies.items() if reply[0] == "error"}
        if not dead and not pending and not failed:
            ok = replies[0]
            if ok[2] is not None:
                self.graphs = GraphInfo(ok[2])
            return ok[1]
        if not dead and not pending:  # every rank answered: the group is intact, re-raise the first error
            rank = min(failed)
            err = pickle.loads(failed[rank][1]) if failed[rank][1] is not None else None
            if isinstance(err, Exception):
                if hasattr(err, "add_note"):
                    err.add_note(f"(raised on TP rank {rank} during {what})")
                raise err
            self._fail(f"TP rank {rank} failed during {what}: {last_line(failed[rank][2])}")
        self._fail(describe_failure(what, time.monotonic() - started, dead, pending, failed))

    def _fail(self, message: str):
        """The group is broken: stop every rank at once, then raise."""
        self.closed = True
        if self._finalizer is not None:
            self._finalizer.detach()
        _cleanup(self.processes, self.conns, self._rundir, patience_s=1.0)
        raise TPRankError(message)

    # -- the runner interface --------------------------------------------------------------------------------------
    def context_encode(self, input_ids: list[list[int]], capture_hidden: bool = False,
                       capture_position: int | None = None):
        return self._call("context_encode", [list(map(int, row)) for row in input_ids], capture_hidden=capture_hidden,
                          capture_position=capture_position)

    def token_generate(self, next_ids: torch.Tensor, positions: torch.Tensor, capture_hidden: bool = False):
        return self._call("token_generate", torch.as_tensor(next_ids).cpu().clone(),
                          torch.as_tensor(positions).cpu().clone(), capture_hidden=capture_hidden)

    def generate(self, prompts: list[list[int]], max_new_tokens: int, stop_token_ids: Iterable[int] = ()):
        """Rank 0 runs the one greedy loop (GraniteRunner.generate) with every rank in step: one round trip."""
        return self._call("generate", [list(map(int, p)) for p in prompts], int(max_new_tokens),
                          [int(t) for t in stop_token_ids])

    def reset(self) -> None:
        self._call("reset")

    def kv_cache_layout(self) -> dict:
        """Rank 0's KV cache per layer kind (every rank holds its own heads' share, the same shape)."""
        return self._call("kv_cache_layout")

    def graph_info(self) -> dict:
        return self.graphs.info()

    def close(self) -> None:
        """Stop every rank (always safe to call; called again it does nothing)."""
        if self.closed:
            return
        self.closed = True
        if self._spmd_local is not None:
            close_spmd(self._control_group)
            return
        if self._finalizer is not None:
            self._finalizer()
        else:
            _cleanup(self.processes, self.conns, self._rundir)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call_spmd(self, method: str, args: tuple, kwargs: dict):
        import torch.distributed as dist
        dist.broadcast_object_list([(method, args, kwargs)], src=0, group=self._control_group)
        return finish_spmd_call(self._spmd_local, method, args, kwargs, self._control_group, self)


def _cleanup(processes, conns, rundir, patience_s: float = 5.0) -> None:
    shutdown(processes, conns, patience_s)
    if rundir is not None:
        shutil.rmtree(rundir, ignore_errors=True)


def last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "unknown error"


SYMPTOMS = ("Timed out", "timed out", "Connection reset", "Connection closed", "Broken pipe")


def describe_failure(what: str, waited_s: float, dead: dict, pending: set, failed: dict) -> str:
    """One line, likeliest cause first: ranks that died, ranks that raised an error of their own, ranks that never
    answered, then ranks whose collectives merely timed out or lost a peer (symptoms of the others)."""
    errors = {r: last_line(reply[2]) for r, reply in failed.items()}
    symptoms = {r: e for r, e in errors.items() if any(word in e for word in SYMPTOMS)}
    causes = {r: e for r, e in errors.items() if r not in symptoms}
    parts = [f"TP rank {r} died ({signal_name(code)}) during {what}" for r, code in sorted(dead.items())]
    parts += [f"TP rank {r} failed during {what}: {e}" for r, e in sorted(causes.items())]
    if pending:
        ranks = ", ".join(str(r) for r in sorted(pending))
        suffix = " (hung)" if not (dead or causes) else ""
        parts.append(f"TP rank{'s' if len(pending) > 1 else ''} {ranks} did not answer {what} within "
                     f"{waited_s:.0f} s{suffix}")
    parts += [f"rank {r} then failed: {e}" for r, e in sorted(symptoms.items())]
    return "; ".join(parts)
