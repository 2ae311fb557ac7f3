"""Timing server for the A/B comparison of code trees: every round in fresh processes, the trees timed in lockstep.

Run as a script by path, never as `-m`, so that no granite_bench is imported before a trial picks its tree:

    python .../granite_bench/gate/ab_probe.py --model tiny-gqa --threads 1

The server imports the heavy libraries once (torch, transformers, safetensors), prints one ready line, then serves
rounds: for each line `{"trees": [PATH, ...], "reps": R, "seed": S, "first": F}` on stdin it forks one child per
tree, one after the other; each shifts its heap by a random amount (seeded by S), imports granite_bench from its
PATH, builds that tree's runner, warms it up and waits. Then the server drives the children in lockstep: every timed
call (PREFILL_REPEATS prefills, then R decode steps) runs in each child in turn, the order rotated from call to call
(AB, BA, AB, ... starting with tree F), and each child times its own call (wall clock and its thread's CPU time).
Only one child runs at a time. The answer holds every tree's per-call seconds; the children exit. Protocol lines on
stdout start with PREFIX; anything else a library prints is ignored by the parent.

Why lockstep: on the shared 2-core host a decode step's CPU time drifts with what the other processes do to the
shared caches and memory (the same code measured 1.4 to 3.8 ms per step, median of 32, from one trial to the next,
also within one process); whole trials of A then B left every round's ratio exposed to those drifts (per-round log
ratio sd 0.19-0.28), calls alternated one by one pair A and B within a few milliseconds (sd 0.03; issue 20).

Why one CPU per round: the host's CPUs are not equally fast at any moment (other tenants share the physical cores
and caches behind them); with the CPUs idle, the two children of a round often ran on different ones for the whole
round, and the round's ratio carried that difference (sd of its log 0.14-0.18 at load 1.1-1.9, against 0.02-0.05
when the load kept them on one CPU). Every round's children are therefore pinned to the CPU the server runs on when
the round starts (sd 0.015 where unpinned rounds gave 0.03-0.05 side by side). Only one child runs at a time, so
pinning costs no parallelism.

Why fresh processes per round: a long-lived worker keeps one memory layout for its life (where its heap objects,
tensors and the interpreter's own structures land), and on the 2-core host two workers running the same code differed
in CPU time per decode step by up to ~4% for as long as they lived (gate/calibrate.py's campaigns, README). Forking
from one server costs ~0.1 s, gives each round its own randomised layouts, and every side starts from the same
parent, so a layout effect becomes round-to-round noise that the rounds average instead of a bias of one side.
"""

from __future__ import annotations

import sys

sys.path.pop(0)  # this script's folder (granite_bench/gate) holds modules named like the standard library's (bisect)

import argparse  # noqa: E402  (after the sys.path fix above)
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

PREFIX = "@@ab "
PREFILL_REPEATS = 8                 # prefill calls per trial (a 32-token prefill is a few ms: one is noisy)
DECODE_BLOCK = 1                    # decode steps a side runs per turn of a lockstep round
WARMUP_STEPS = 8                    # untimed decode steps (and prefills) first: allocator, caches, lazy init
SHARED_LIBRARIES = ("numpy", "torch", "safetensors.torch", "transformers",
                    "transformers.models.granite.modeling_granite")


def send(message: dict) -> None:
    sys.stdout.write(PREFIX + json.dumps(message) + "\n")
    sys.stdout.flush()


def import_tree(tree: str):
    """Import granite_bench from `tree` (first on sys.path), and refuse any other copy."""
    tree = os.path.realpath(tree)
    sys.path.insert(0, tree)
    import granite_bench
    found = os.path.realpath(os.path.dirname(granite_bench.__file__))
    if os.path.dirname(found) != tree:
        raise RuntimeError(f"imported granite_bench from {found}, not from the tree {tree}")
    return granite_bench


def shifted_heap(seed: int) -> list:
    """Allocations of random number and sizes, kept alive by the caller: everything the trial allocates afterwards
    (modules, the model's objects and tensors) lands at a layout of its own."""
    rng = random.Random(seed)
    import torch
    small = [bytearray(rng.randrange(8, 1024)) for _ in range(rng.randrange(1, 4096))]
    return [small, bytearray(rng.randrange(4096, 1 << 20)), torch.empty(rng.randrange(1, 1 << 20), dtype=torch.uint8)]


def build_runner(args):
    import torch
    try:
        from granite_bench.runtime.select import build_runner
    except ImportError:  # a tree from before runtime/select.py chose its runner in GraniteRunner.build
        from granite_bench.runtime.runner import GraniteRunner
        build_runner = GraniteRunner.build
    torch.set_num_threads(args.threads)
    runner = build_runner(args.model, dtype=args.dtype, device="cpu", batch_size=1, seq_len=args.seq_len,
                          buckets=[args.prompt_len], num_layers=args.layers)
    prompt = [[(7 * i + 3) % 200 + 5 for i in range(args.prompt_len)]]
    return runner, prompt


def run_trial(runner, prompt, reps: int) -> dict:
    """Seconds per context_encode call and per token_generate step, wall clock and this thread's CPU time
    (time.thread_time: with one torch thread every op runs on it, and time spent waiting for a core while other
    processes run is not counted); the cache is reset before each prefill."""
    import torch
    prefill, prefill_cpu = [], []
    for _ in range(PREFILL_REPEATS):
        runner.reset()
        start, start_cpu = time.perf_counter(), time.thread_time()
        logits = runner.context_encode(prompt)
        prefill_cpu.append(time.thread_time() - start_cpu)
        prefill.append(time.perf_counter() - start)
    next_id = logits[:, -1].argmax(-1)
    length = len(prompt[0])
    decode, decode_cpu = [], []
    for step in range(reps):
        start, start_cpu = time.perf_counter(), time.thread_time()
        logits = runner.token_generate(next_id, torch.tensor([length + step]))
        decode_cpu.append(time.thread_time() - start_cpu)
        decode.append(time.perf_counter() - start)
        next_id = logits.argmax(-1)
    return {"prefill_s": prefill, "decode_s": decode, "prefill_cpu_s": prefill_cpu, "decode_cpu_s": decode_cpu}


class SideFailed(RuntimeError):
    """A side's child failed or died; index says which tree of the round."""

    def __init__(self, index: int, message: dict):
        super().__init__(message.get("error", "failed"))
        self.index, self.message = index, message


def side_child(args, tree: str, seed: int, commands, replies) -> None:
    """In a forked child: a shifted heap, the tree's runner and a warm-up, then one timed call per command line
    ('prefill': reset the cache and encode the prompt; 'step': the next decode step; 'quit')."""
    def reply(message: dict) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()
    import torch
    keep = shifted_heap(seed)
    package = import_tree(tree)
    runner, prompt = build_runner(args)
    run_trial(runner, prompt, WARMUP_STEPS)
    reply({"ready": True, "granite_bench": os.path.dirname(package.__file__), "pid": os.getpid()})
    next_id, length, step = None, len(prompt[0]), 0
    for line in commands:
        command = line.strip()
        if command == "quit":
            break
        if command == "prefill":
            runner.reset()
            start, start_cpu = time.perf_counter(), time.thread_time()
            logits = runner.context_encode(prompt)
            cpu, wall = time.thread_time() - start_cpu, time.perf_counter() - start
            next_id, step = logits[:, -1].argmax(-1), 0
        elif command == "step":
            start, start_cpu = time.perf_counter(), time.thread_time()
            logits = runner.token_generate(next_id, torch.tensor([length + step]))
            cpu, wall = time.thread_time() - start_cpu, time.perf_counter() - start
            next_id, step = logits.argmax(-1), step + 1
        else:
            raise RuntimeError(f"unknown command {command!r}")
        reply({"cpu": cpu, "wall": wall})
    del keep


class Side:
    """The server's end of one forked child: its command and reply pipes."""

    def __init__(self, args, tree: str, seed: int, index: int, close_in_child: list):
        command_read, command_write = os.pipe()
        reply_read, reply_write = os.pipe()
        self.index = index
        self.pid = os.fork()
        if self.pid == 0:
            for fd in [command_write, reply_read, *close_in_child]:
                os.close(fd)
            replies = os.fdopen(reply_write, "w")
            code = 0
            try:
                side_child(args, tree, seed, os.fdopen(command_read), replies)
            except BaseException as err:  # the parent reports it with the tree's name
                replies.write(json.dumps({"error": f"{type(err).__name__}: {err}",
                                          "traceback": traceback.format_exc()}) + "\n")
                code = 1
            replies.flush()
            os._exit(code)
        os.close(command_read)
        os.close(reply_write)
        self.commands = os.fdopen(command_write, "w")
        self.replies = os.fdopen(reply_read)
        self.fds = [command_write, reply_read]

    def answer(self) -> dict:
        line = self.replies.readline()
        if not line:
            _, status = os.waitpid(self.pid, 0)
            self.pid = 0
            raise SideFailed(self.index, {"error": f"the trial process exited "
                                                   f"({os.waitstatus_to_exitcode(status)}) without answering"})
        message = json.loads(line)
        if "error" in message:
            raise SideFailed(self.index, message)
        return message

    def call(self, command: str) -> dict:
        self.commands.write(command + "\n")
        self.commands.flush()
        return self.answer()

    def close(self) -> None:
        try:
            self.commands.write("quit\n")
            self.commands.close()
        except OSError:
            pass
        self.replies.close()
        if self.pid:
            os.waitpid(self.pid, 0)


def call_order(n_sides: int, call: int, first: int) -> list[int]:
    """The sides' turn for timed call number `call`: rotated by one each call, starting with side `first`."""
    shift = (first + call) % n_sides
    return list(range(shift, n_sides)) + list(range(shift))


def current_cpu() -> int | None:
    """The CPU this process runs on now (Linux: field 39 of /proc/self/stat), or None where that is unknown."""
    try:
        with open("/proc/self/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def on_one_cpu():
    """Pin this process, and so every child it forks meanwhile, to the CPU it runs on now (yielded; None where
    affinity cannot be set); its earlier CPU mask is restored afterwards."""
    cpu = current_cpu()
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else set()
    if cpu is None or cpu not in allowed:
        yield None
        return
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, allowed)


def lockstep_round(args, trees: list[str], reps: int, seed: int, first: int = 0,
                   block: int = DECODE_BLOCK) -> list[dict]:
    """A lockstep round with every tree's process on one CPU (on_one_cpu, chosen afresh each round)."""
    with on_one_cpu() as cpu:
        sides = timed_round(args, trees, reps, seed, first, block)
    return [side | {"cpu": cpu} for side in sides]


def turns(reps: int, block: int) -> list[tuple[str, int]]:
    """(command, calls) per turn of a side: each prefill alone, then the decode steps in blocks of `block`."""
    steps = [("step", min(block, reps - done)) for done in range(0, reps, block)]
    return [("prefill", 1)] * PREFILL_REPEATS + steps


def timed_round(args, trees: list[str], reps: int, seed: int, first: int = 0,
                block: int = DECODE_BLOCK) -> list[dict]:
    """Fork one child per tree (one after the other, each ready before the next, starting with tree `first`), then
    time every call in each child in turn (call_order); per tree its per-call seconds and which granite_bench it
    imported."""
    sides: dict[int, Side] = {}
    try:
        readies = {}
        for index in call_order(len(trees), 0, first):  # forked in the order of the first call, too
            sides[index] = Side(args, trees[index], seed * len(trees) + index, index,
                                [fd for side in sides.values() for fd in side.fds])
            readies[index] = sides[index].answer()
        out = [{"prefill_s": [], "prefill_cpu_s": [], "decode_s": [], "decode_cpu_s": [],
                "granite_bench": readies[i]["granite_bench"], "pid": readies[i]["pid"]} for i in range(len(trees))]
        for number, (command, calls) in enumerate(turns(reps, block)):
            wall, cpu = ("prefill_s", "prefill_cpu_s") if command == "prefill" else ("decode_s", "decode_cpu_s")
            for index in call_order(len(sides), number, first):
                for _ in range(calls):
                    timed = sides[index].call(command)
                    out[index][wall].append(timed["wall"])
                    out[index][cpu].append(timed["cpu"])
        return out
    finally:
        for side in sides.values():
            side.close()


def serve_one(args, request: dict) -> None:
    """One round (lockstep_round); a child that fails or dies is reported with its tree's index."""
    try:
        sides = lockstep_round(args, list(request["trees"]), int(request["reps"]), int(request.get("seed", 0)),
                               int(request.get("first", 0)), int(request.get("block", DECODE_BLOCK)))
    except SideFailed as err:
        send(err.message | {"side": err.index})
        return
    send({"sides": sides})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-gqa")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import importlib
    for name in SHARED_LIBRARIES:  # imported once here, shared by every child; no torch op runs before a fork
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    import torch
    send({"ready": True, "torch": torch.__version__, "threads": args.threads, "pid": os.getpid()})
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            break
        serve_one(args, request)
    return 0


if __name__ == "__main__":
    sys.exit(main())
