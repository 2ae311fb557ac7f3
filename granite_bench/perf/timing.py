"""Timers and process probes: a monotonic nanosecond clock with device synchronisation, thread settings, peak memory.

Every latency is taken with `time.perf_counter_ns()` after synchronising the device, so asynchronous CUDA work is
inside the interval it belongs to. On CPU the synchronisation is a no-op.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

from ..runtime.generation import greedy_generate


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
    # the same intervals in CPU time of this process (all its threads): what other processes taking turns on the
    # cores do not inflate (they still compete for memory bandwidth); None where not measured
    ttft_cpu_ns: int | None = None
    step_cpu_ns: list[int] | None = None


def time_runner_generation(runner, prompts: list[list[int]], new_tokens: int, sync) -> GenerationTiming:
    """Greedy decode of exactly `new_tokens` (no stop tokens) through the one generation loop, every interval
    closed after synchronising the device. Perf builds its runners with output_logits off (last position only,
    as HF generate computes it)."""
    cpu_stamps: list[int] = []

    def clock() -> int:   # greedy_generate reads it at the start, at the first token and after every step
        wall = now_ns(sync)
        cpu_stamps.append(time.process_time_ns())
        return wall
    result = greedy_generate(runner, prompts, new_tokens, clock=clock)
    t = result.timings
    return GenerationTiming(t["ttft_ns"], t["step_ns"], t["e2e_ns"], result.tokens,
                            cpu_stamps[1] - cpu_stamps[0], [b - a for a, b in zip(cpu_stamps[1:], cpu_stamps[2:])])


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
