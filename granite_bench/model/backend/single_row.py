"""Which kernel multiplies one row by a bf16/fp16 weight on CPU: measured on this host, once per process.

A decode step at batch 1 is a chain of matrix-vector products, and the kernel that streams the weights fastest depends
on the CPU, not only on the instruction set torch dispatches at. Measured on the 4-layer granite-3.1-2b bf16 decode
step, one thread: on an Intel Xeon with AMX, AVX-512 kernels, torch.mv (fp32 accumulation) beat linear's oneDNN path,
81 vs 102 ms of process CPU time; on an AMD EPYC with avx512_bf16 and no AMX, same kernels, torch.mv streams at half
linear's speed on every projection of that model (4-5 vs 9-17 GB/s); with AVX2 kernels linear wins (7.1 vs 8.6 ms per
8192 x 2048 projection). So each candidate is timed, in process CPU time, on a slice of a real weight (rows of the
length in use, about 8 MiB each, round robin over the weight: ~20 ms of CPU per row length on the AMD host) the first time a (dtype, row length) is
needed, and the fastest is kept for the process.

The candidates: linear (oneDNN where torch has it), torch.mv, and linear through ATen's own kernels with oneDNN off
for the call; on the AMD host the last one streams at 16-18 GB/s where oneDNN's linear reaches 9-10 and torch.mv 5
(an 8192 x 2048 projection; with oneDNN limited to AVX2 or AVX512_CORE its bf16 paths are as fast: oneDNN's
avx512_bf16 matrix-vector path is what is slow there). `choose_for_model` measures when a model is loaded; a
compiled graph uses linear (its products are the compiler's).

Linear stays unless another kernel takes under `MARGIN` of its time, so a close call on a noisy host does not flip
the choice (and the low bits of the result) from one process to the next.
"""

from __future__ import annotations

import itertools
import time
from typing import Callable

import torch
from torch import nn

REDUCED_PRECISION = (torch.bfloat16, torch.float16)
DEFAULT_KERNEL = "linear"
MARGIN = 0.9             # another kernel replaces linear when its best time is under 90% of linear's
PROBE_BYTES = 8 << 20    # the slice of a weight each candidate is timed on
COLD_BYTES = 64 << 20    # a weight smaller than this is timed on a scratch matrix of its row length this large instead
ROUNDS = 5               # timed calls per candidate (after one untimed), interleaved; the best counts


def mv_row(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] holding one row, weight [N, K] -> [..., N] through torch.mv (+ bias)."""
    y = torch.mv(weight, x.reshape(-1)).view(*x.shape[:-1], weight.shape[0])
    return y if bias is None else y + bias


def linear_row(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return nn.functional.linear(x, weight, bias)


def aten_linear_row(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """linear through ATen's own CPU kernels (fp32 accumulation), oneDNN switched off for this call only. torch's
    public switch (`torch.backends.mkldnn.flags`) also resets TF32 settings and warns on every call (~20 us); the
    flag it sets is read and restored directly here (~1 us)."""
    enabled = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        return nn.functional.linear(x, weight, bias)
    finally:
        torch._C._set_mkldnn_enabled(enabled)


KERNELS: dict[str, Callable[..., torch.Tensor]] = {"linear": linear_row, "mv": mv_row, "aten_linear": aten_linear_row}

_chosen: dict[tuple[torch.dtype, int], str] = {}   # (dtype, row length K) -> kernel name, for this process


def seconds(fn: Callable[..., object], *args) -> float:
    """CPU seconds of this process (all its threads) in one call: on a loaded host, wall time also counts the time
    other processes held the core, which could flip the choice (and the decode step with it, by 1.5x)."""
    start = time.process_time()
    fn(*args)
    return time.process_time() - start


def measure(weight: torch.Tensor, rounds: int = ROUNDS) -> dict[str, float]:
    """Best CPU seconds of each kernel multiplying one row by an ~PROBE_BYTES slice of weight [..., K]. Successive
    calls take successive slices (round robin over the weight), so a weight larger than the last-level cache is read
    from memory as in a decode step, not from the cache the previous call filled (in cache, oneDNN's linear and ATen's
    came out within the margin of each other on the AMD host; from memory ATen's is 1.7x faster)."""
    matrix = cold_matrix(weight)                                     # [rows, K]
    k = matrix.shape[-1]
    rows = max(1, min(matrix.shape[0], PROBE_BYTES // (k * weight.element_size())))
    probes = [matrix[start:start + rows] for start in range(0, matrix.shape[0] - rows + 1, rows)]
    calls = itertools.count()
    x = torch.ones(1, k, dtype=weight.dtype, device=weight.device)
    for kernel in KERNELS.values():                                  # untimed: first-call set-up (oneDNN primitives)
        kernel(x, probes[next(calls) % len(probes)])
    best = dict.fromkeys(KERNELS, float("inf"))
    for _ in range(rounds):                                          # interleaved: drifting load hits every kernel
        for name, kernel in KERNELS.items():
            best[name] = min(best[name], seconds(kernel, x, probes[next(calls) % len(probes)]))
    return best


def cold_matrix(weight: torch.Tensor) -> torch.Tensor:
    """weight [..., K] as [rows, K] when it holds at least COLD_BYTES, else a scratch [rows, K] matrix of its dtype that
    does: round robin over a weight that fits in the last-level cache would time every kernel on cached rows, while a
    decode step streams each weight from memory (on the AMD host oneDNN's linear wins in cache and loses by 2x from
    memory, so a 5 MiB projection of rows of 1024 took the slower kernel)."""
    k = weight.shape[-1]
    matrix = weight.reshape(-1, k)
    if matrix.numel() * matrix.element_size() >= COLD_BYTES:
        return matrix
    rows = -(-COLD_BYTES // (k * matrix.element_size()))
    return torch.full((rows, k), 0.5, dtype=weight.dtype, device=weight.device)   # values do not change the speed


def pick(best: dict[str, float]) -> str:
    """The fastest kernel, if it beats linear by the margin; else linear."""
    fastest = min(best, key=best.get)
    return fastest if best[fastest] < MARGIN * best[DEFAULT_KERNEL] else DEFAULT_KERNEL


def kernel_for(weight: torch.Tensor) -> str:
    """The kernel this process uses for one row times `weight` (measured on first need, then cached)."""
    if torch.compiler.is_compiling():   # a compiled graph's products are the compiler's; it cannot measure
        return DEFAULT_KERNEL
    key = (weight.dtype, weight.shape[-1])
    name = _chosen.get(key)
    if name is None:
        name = _chosen[key] = pick(measure(weight))
    return name


def choose_for_model(model: nn.Module) -> dict[tuple[torch.dtype, int], str]:
    """Measure the kernel for every (reduced dtype, row length) among the model's CPU matrices, each on the largest
    matrix of that row length (the one most likely to be larger than the cache); returns the choices."""
    largest: dict[tuple[torch.dtype, int], torch.Tensor] = {}
    for param in model.parameters():
        if (param.device.type == "cpu" and param.dtype in REDUCED_PRECISION and param.dim() >= 2
                and param.is_contiguous()):
            key = (param.dtype, param.shape[-1])
            if key not in largest or param.numel() > largest[key].numel():
                largest[key] = param.data
    for weight in largest.values():
        kernel_for(weight)
    return dict(_chosen)


def forget_choices() -> None:
    """Drop the cached choices (tests)."""
    _chosen.clear()
