"""Timers and process probes: a monotonic nanosecond clock with device synchronisation, thread settings, peak memory.

Every latency is taken with `time.perf_counter_ns()` after synchronising the device, so asynchronous CUDA work is
inside the interval it belongs to. On CPU the synchronisation is a no-op.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch


def synchronizer(device: str):
    """A function that waits until all queued work on `device` is done."""
    if str(device).startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def now_ns(sync) -> int:
    sync()
    return time.perf_counter_ns()


@dataclass
class GenerationTiming:
    """One timed generation of N new tokens for a batch: prefill, then N - 1 decode steps."""

    ttft_ns: int                    # prompt in -> first new token out (context encoding + first sampling)
    step_ns: list[int]              # one entry per decode step (token generation + sampling)
    e2e_ns: int                     # prompt in -> last token out
    tokens: list[list[int]] = field(default_factory=list)


@torch.no_grad()
def time_runner_generation(runner, prompts: list[list[int]], new_tokens: int, sync) -> GenerationTiming:
    """Greedy decode through the runner's two static entry points, timing every phase.

    The runner is built with output_logits off, so context encoding returns the last position's logits only
    ([B, 1, V]), as HF generate computes them; with it on, the last real position of each row is used.
    """
    lengths = torch.tensor([len(p) for p in prompts])
    start = now_ns(sync)
    logits = runner.context_encode(prompts)                     # [B, 1 or L, V]
    last = logits[:, 0] if logits.shape[1] == 1 else logits[torch.arange(len(prompts)), lengths - 1]
    next_ids = last.argmax(-1)                                  # [B]
    first = now_ns(sync)
    chosen = [next_ids]
    steps = []
    before = first
    for step in range(1, new_tokens):
        logits = runner.token_generate(next_ids, lengths + step - 1)  # [B, V]
        next_ids = logits.argmax(-1)
        chosen.append(next_ids)
        after = now_ns(sync)
        steps.append(after - before)
        before = after
    tokens = torch.stack(chosen, dim=1).tolist()
    return GenerationTiming(first - start, steps, before - start, tokens)


# -- threads ---------------------------------------------------------------------------------------------------
def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> dict:
    """Set torch's intra-op threads (default: the cores this process may use); returns what is in effect."""
    torch.set_num_threads(threads or available_cores())
    return {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "cores_available": available_cores()}


# -- memory ----------------------------------------------------------------------------------------------------
def reset_peak_rss(pids=()) -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process and `pids`; False where the platform cannot."""
    ok = True
    for pid in ("self", *pids):
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


def peak_rss_bytes(pids=()) -> int:
    """Peak resident set size since the last reset, summed over this process and `pids` (worker ranks)."""
    total = 0
    for pid in ("self", *pids):
        total += _vm_hwm(pid)
    return total


def _vm_hwm(pid) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    if pid == "self":  # no /proc: the lifetime peak is the best there is
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024
    return 0


def reset_device_peak(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def device_peak_bytes(device: str) -> int | None:
    if str(device).startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return None
