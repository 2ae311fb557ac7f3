"""Timing worker for the interleaved A/B comparison of two code trees.

Run as a script by path, never as `-m`, so that it imports the granite_bench of the tree it is pointed at and not
the installed one:

    python .../granite_bench/gate/ab_probe.py --tree /path/to/tree --model tiny-gqa

It builds that tree's runner once, warms it up, prints one ready line, then serves trials: for each line
`{"reps": R}` on stdin it times `context_encode` of one prompt and R `token_generate` steps, and prints the
per-call seconds (wall clock and the thread's CPU time). Protocol lines on stdout start with PREFIX; anything else a library prints is ignored by the
parent. Both trees' workers stay alive during the comparison and only one of them runs at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

PREFIX = "@@ab "
PREFILL_REPEATS = 8                 # prefill calls per trial (a 32-token prefill is a few ms: one is noisy)


def send(message: dict) -> None:
    sys.stdout.write(PREFIX + json.dumps(message) + "\n")
    sys.stdout.flush()


def import_tree(tree: str):
    """Import granite_bench from `tree` (first on sys.path), and refuse any other copy."""
    tree = os.path.realpath(tree)
    sys.path[0] = tree  # replaces this script's folder, whose module names must not shadow anything
    import granite_bench
    found = os.path.realpath(os.path.dirname(granite_bench.__file__))
    if os.path.dirname(found) != tree:
        raise RuntimeError(f"imported granite_bench from {found}, not from the tree {tree}")
    return granite_bench


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", required=True)
    parser.add_argument("--model", default="tiny-gqa")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        package = import_tree(args.tree)
        runner, prompt = build_runner(args)
        run_trial(runner, prompt, 8)  # warm-up: allocator, caches, lazy init
    except Exception as err:  # the parent reports it with the tree's name
        send({"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
        return 1
    import torch
    send({"ready": True, "granite_bench": os.path.dirname(package.__file__), "torch": torch.__version__,
          "threads": torch.get_num_threads()})
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            break
        try:
            send(run_trial(runner, prompt, int(request["reps"])))
        except Exception as err:
            send({"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
