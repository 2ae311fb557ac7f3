"""Timing server for the interleaved A/B comparison of code trees: every trial in a fresh process.

Run as a script by path, never as `-m`, so that no granite_bench is imported before a trial picks its tree:

    python .../granite_bench/gate/ab_probe.py --model tiny-gqa --threads 1

The server imports the heavy libraries once (torch, transformers, safetensors), prints one ready line, then serves
trials: for each line `{"tree": PATH, "reps": R, "seed": S}` on stdin it forks a child that shifts its heap by a
random amount (seeded by S), imports granite_bench from PATH, builds that tree's runner, warms it up, times
`context_encode` of one prompt and R `token_generate` steps, prints the per-call seconds (wall clock and the thread's
CPU time) and exits. Protocol lines on stdout start with PREFIX; anything else a library prints is ignored by the
parent. One child runs at a time.

Why a fresh process per trial: a long-lived worker keeps one memory layout for its life (where its heap objects,
tensors and the interpreter's own structures land), and on the 2-core host two workers running the same code differed
in CPU time per decode step by up to ~4% for as long as they lived, whatever the number of trials (ASLR off or on, a
fresh tensor layout per trial or not: gate/calibrate.py's campaigns, README). Forking from one server costs ~0.1 s,
gives each trial its own randomised layout, and both sides start from the same parent, so a layout effect becomes
trial-to-trial noise that the rounds average instead of a bias of one side.
"""

from __future__ import annotations

import sys

sys.path.pop(0)  # this script's folder (granite_bench/gate) holds modules named like the standard library's (bisect)

import argparse  # noqa: E402  (after the sys.path fix above)
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

PREFIX = "@@ab "
PREFILL_REPEATS = 8                 # prefill calls per trial (a 32-token prefill is a few ms: one is noisy)
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


def child_trial(args, request: dict) -> dict:
    """In the forked child: a shifted heap, the tree's runner, a warm-up, then the timed trial."""
    keep = shifted_heap(int(request.get("seed", 0)))
    package = import_tree(request["tree"])
    runner, prompt = build_runner(args)
    run_trial(runner, prompt, WARMUP_STEPS)
    out = run_trial(runner, prompt, int(request["reps"]))
    del keep
    return out | {"granite_bench": os.path.dirname(package.__file__), "pid": os.getpid()}


def serve_one(args, request: dict) -> None:
    """Fork, run the trial in the child, wait for it; a child that dies without answering is reported."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        code = 0
        try:
            send(child_trial(args, request))
        except BaseException as err:  # the parent reports it with the tree's name
            send({"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
            code = 1
        os.write(write_end, b"x")
        os._exit(code)
    os.close(write_end)
    answered = os.read(read_end, 1)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if not answered:
        send({"error": f"the trial process exited ({os.waitstatus_to_exitcode(status)}) without answering"})


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
