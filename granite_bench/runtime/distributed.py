"""Tensor parallelism on torch.distributed: one process per TP rank, driven SPMD.

Two launch modes, one runner interface (`TPRunner`, the same methods and attributes as `GraniteRunner`):

- one host, `--tp N`: the CLI process is the driver. It converts the checkpoint once into per-rank shards
  (cached beside the model, `rank{r}.safetensors`), starts N worker processes (gloo on CPU, NCCL on CUDA), sends
  every call to every rank over a pipe, and returns rank 0's answer. A rank that dies, fails or stops answering
  ends the run with an error naming it; `close()` always stops the workers.
- `torchrun` (one or several hosts): every process runs the same command. Rank 0 returns a driver `TPRunner`
  that broadcasts each call over the process group; the other ranks serve those calls inside
  `GraniteRunner.build` and exit when rank 0 closes.

Collectives run under a bounded process-group timeout, so a rank waiting on a dead or hung peer fails instead of
waiting for ever; the driver's own deadline is that timeout plus a grace period.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import tempfile
import time
import traceback
import weakref
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import wait
from pathlib import Path
from types import SimpleNamespace

import torch

from ..model import parallel_state as ps
from ..model.config import NeuronConfig
from ..model.state_dict import (has_sharded_checkpoint, load_hf_state_dict, load_rank_shard,
                                save_sharded_checkpoint, shard_key)
from .graphs import GraphInfo

EAGER_TIMEOUT_S = 120.0        # a collective waiting longer than this on a peer fails (eager graphs)
COMPILE_TIMEOUT_S = 1800.0     # compiled graphs: peers may still be compiling their copy of a graph
START_TIMEOUT_S = 600.0       # start-up (process start, rendezvous, shard load) on a busy host
GRACE_S = 15.0                 # how long the driver waits for the other ranks once one has failed or died
TIMEOUT_ENV = "GRANITE_BENCH_TP_TIMEOUT"
START_METHOD_ENV = "GRANITE_BENCH_TP_START_METHOD"
WORKER_METHODS = ("context_encode", "token_generate", "generate", "reset", "graph_info")


class TPRankError(RuntimeError):
    """A TP rank died, hung or failed; the message names it."""


# -- launch helpers ------------------------------------------------------------------------------------------------
def backend_for(device: str) -> str:
    """Collective backend per device: NCCL between GPUs, gloo on CPU (gloo reduces in fp32: no bf16 collectives)."""
    return "nccl" if device == "cuda" else "gloo"


def rank_device(device: str, local_rank: int) -> str:
    return f"cuda:{local_rank}" if device == "cuda" else "cpu"


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


def check_devices(device: str, tp: int) -> None:
    """Refuse, before any process starts, a TP degree the visible devices cannot hold."""
    if device == "cuda":
        from .runner import InputError
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count < tp:
            raise InputError(f"--tp {tp} on --device cuda needs {tp} GPUs, {count} visible: lower --tp "
                             f"or run across hosts with torchrun")
    elif device == "neuron":
        from .neuron import require_neuron
        require_neuron()
    elif device != "cpu":
        from .runner import InputError
        raise InputError(f"unknown --device {device!r}: choose cpu, cuda or neuron")


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


# -- per-rank sharded checkpoints --------------------------------------------------------------------------------
def shard_cache_dir(model_dir: Path, neuron_config: NeuronConfig) -> Path:
    """GRANITE_BENCH_CACHE/shards/<model>-<hash of checkpoint files, tp, dtype, fused_qkv>/."""
    from ..reference.weights import cache_root
    key = shard_key(model_dir, neuron_config.tp_degree, neuron_config.dtype, neuron_config.fused_qkv)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / "shards" / f"{Path(model_dir).name}-tp{neuron_config.tp_degree}-{digest}"


def prepare_shards(model_dir: Path, hf_config, neuron_config: NeuronConfig) -> Path:
    """Convert the HF checkpoint into tp rank shards once; later runs reuse them."""
    from ..model.modeling_granite import head_plan
    directory = shard_cache_dir(model_dir, neuron_config)
    tp = neuron_config.tp_degree
    if not has_sharded_checkpoint(directory, tp):
        plan = head_plan(hf_config, tp)
        manifest = shard_key(model_dir, tp, neuron_config.dtype, neuron_config.fused_qkv)
        save_sharded_checkpoint(load_hf_state_dict(model_dir), hf_config, plan, tp, neuron_config.dtype, directory,
                                neuron_config.fused_qkv, manifest)
    return directory


# -- a rank ----------------------------------------------------------------------------------------------------
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

    from .runner import GraniteRunner, load_rank_model
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


# -- the driver ------------------------------------------------------------------------------------------------
def mp_context():
    """forkserver (workers fork from a server that has imported torch once: cheap start-up), spawn elsewhere."""
    import multiprocessing
    method = os.environ.get(START_METHOD_ENV) or (
        "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
    ctx = torch.multiprocessing.get_context(method)
    if method == "forkserver":
        # torch._dynamo: model loading imports it (~1 s of imports per rank otherwise).
        ctx.set_forkserver_preload([__name__, "granite_bench.runtime.runner", "torch._dynamo"])
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
    """Drives tp_degree ranks SPMD behind GraniteRunner's interface; rank 0 answers."""

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

    @property
    def compile_seconds(self) -> dict:
        return self.graphs.compile_seconds

    @property
    def compile_counts(self) -> dict:
        return dict(self.graphs.compile_counts)

    # -- start ---------------------------------------------------------------------------------------------------
    @classmethod
    def start(cls, model_dir: Path, hf_config, neuron_config: NeuronConfig, device: str = "cpu",
              compile: bool = False, timeout_s: float | None = None):
        """Start the ranks (or, under torchrun, join them) and load every shard; returns the driver runner."""
        from ..model.modeling_granite import head_plan
        from ..reference.weights import read_init
        tp = neuron_config.tp_degree
        head_plan(hf_config, tp)  # a bad TP degree is refused before any process starts
        timeout_s = float(timeout_s) if timeout_s is not None else collective_timeout(compile)
        runner = cls(model_dir, hf_config, neuron_config, device, compile, read_init(model_dir), timeout_s)
        if spmd_world() is not None:
            return runner._join_torchrun()
        check_devices(device, tp)
        started = time.perf_counter()
        runner.shard_dir = prepare_shards(model_dir, hf_config, neuron_config)
        runner._spawn()
        runner.load_seconds = time.perf_counter() - started
        return runner

    def _spec(self, rank: int, init_method: str, local: bool = True) -> RankSpec:
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
            proc = ctx.Process(target=worker_main, args=(self._spec(rank, init_method), child),
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
    def context_encode(self, input_ids: list[list[int]], capture_hidden: bool = False):
        return self._call("context_encode", [list(map(int, row)) for row in input_ids], capture_hidden=capture_hidden)

    def token_generate(self, next_ids: torch.Tensor, positions: torch.Tensor, capture_hidden: bool = False):
        return self._call("token_generate", torch.as_tensor(next_ids).cpu().clone(),
                          torch.as_tensor(positions).cpu().clone(), capture_hidden=capture_hidden)

    def generate(self, prompts: list[list[int]], max_new_tokens: int):
        return self._call("generate", [list(map(int, p)) for p in prompts], int(max_new_tokens))

    def reset(self) -> None:
        self._call("reset")

    def graph_info(self) -> dict:
        return self.graphs.info()

    def close(self) -> None:
        """Stop every rank (always safe to call; called again it does nothing)."""
        if self.closed:
            return
        self.closed = True
        if self._spmd_local is not None:
            _close_spmd(self._control_group)
            return
        if self._finalizer is not None:
            self._finalizer()
        else:
            _cleanup(self.processes, self.conns, self._rundir)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- torchrun ------------------------------------------------------------------------------------------------
    def _join_torchrun(self):
        """Under torchrun: join the env:// process group; rank 0 drives, the other ranks serve and then exit."""
        import torch.distributed as dist
        rank, world, local_rank = spmd_world()
        if world != self.tp_degree:
            from .runner import InputError
            raise InputError(f"torchrun started {world} processes but --tp is {self.tp_degree}: make them equal")
        if not dist.is_initialized():
            dist.init_process_group(self.backend, init_method="env://",
                                    timeout=timedelta(seconds=max(self.timeout_s, START_TIMEOUT_S)))
        control = dist.new_group(backend="gloo") if self.backend != "gloo" else None
        started = time.perf_counter()
        if local_rank == 0:  # one converter per host (hosts need not share a cache folder)
            self.shard_dir = prepare_shards(self.model_dir, self.hf_config, self.neuron_config)
        dist.barrier(group=control)
        self.shard_dir = shard_cache_dir(self.model_dir, self.neuron_config)
        spec = self._spec(rank, "env://", local=False)
        local = build_rank_runner(spec, local_rank)
        if rank != 0:
            serve_spmd(local, control)
            raise SystemExit(0)
        self._spmd_local, self._control_group = local, control
        self.load_seconds = time.perf_counter() - started
        return self

    def _call_spmd(self, method: str, args: tuple, kwargs: dict):
        import torch.distributed as dist
        dist.broadcast_object_list([(method, args, kwargs)], src=0, group=self._control_group)
        return finish_spmd_call(self._spmd_local, method, args, kwargs, self._control_group, self)


def single_process_twin(runner):
    """A TP-1 runner on the same checkpoint, static shapes and device: the baseline of a TP-N vs TP-1 check.

    Under torchrun the driver is itself rank 0 of the TP group: the twin is built and run with the model-parallel
    state set to one process, so it issues no collective that the other ranks (serving rank 0's broadcasts) would
    have to join."""
    from .runner import GraniteRunner
    config = NeuronConfig.from_dict({**runner.neuron_config.to_dict(), "tp_degree": 1})
    with ps.single_process_state():
        twin = GraniteRunner.build(str(runner.model_dir), neuron_config=config, device=runner.device)
    return SingleProcessTwin(twin) if spmd_world() is not None else twin


class SingleProcessTwin:
    """A TP-1 runner whose every call runs with the model-parallel state of one process (see single_process_twin)."""

    def __init__(self, runner):
        self._runner = runner

    def __getattr__(self, name):
        value = getattr(self._runner, name)
        if not callable(value):
            return value

        def unsharded(*args, **kwargs):
            with ps.single_process_state():
                return value(*args, **kwargs)
        return unsharded


def max_logit_difference(logits: list[torch.Tensor], baseline: list[torch.Tensor]) -> float:
    """max |a - b| over every position of every prompt (e.g. TP-N against TP-1 teacher-forced logits)."""
    return max(float((a.float() - b.float()).abs().max()) for a, b in zip(logits, baseline, strict=True))


def spmd_world() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when this process was started by torchrun with several ranks."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    if world < 2:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))


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


def _close_spmd(control) -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.broadcast_object_list([("close", (), {})], src=0, group=control)
        ps.destroy_model_parallel()
        dist.destroy_process_group()


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
