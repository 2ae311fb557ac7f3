"""Roofline: the machine's ceilings measured in the same run, and the bytes / FLOPs one step of the model needs.

Ceilings, each timed over at least `reps` calls and at least `min_seconds` after a warm-up, with the torch thread
count of the points they serve; the median and the best call are kept, and fractions use the best (a busy machine
only ever slows a call down, so the fastest call is the closest to what the machine can do):
- plain read bandwidth: `sum` over a buffer far larger than the caches;
- large matrix-vector bandwidth in the model's dtype: the fastest of the one-row kernels a decode step's projections
  choose from (`model.backend.single_row.KERNELS`: oneDNN's `linear`, `mv`, `linear` on ATen's own kernels; on CUDA
  `linear` and `mv`) over a weight far larger than the caches, which is what a decode step
  mostly is. "Far larger" is measured, not assumed: both buffers are at least twice the last-level cache the OS
  reports (some servers have hundreds of MiB of L3: a 256 MiB weight there is partly served from cache, which gives
  a ceiling no decode over a model that does not fit the cache can reach). On CPU both buffers sit in memory
  advised for transparent huge pages (runtime.huge_pages), as the implementation's weights do: streaming from 2 MiB
  pages is faster than from 4 KiB ones, and a ceiling must be the best the machine does;
- matmul FLOP/s in the model's dtype, the prefill ceiling: the faster of `a @ b` and `linear(a, b)` (the kernel the
  model's projections use), square.
A fraction of a ceiling above 100% means the ceiling was measured too low (the machine was busier while it was
measured than during the point): the fraction is kept as measured and the row flagged `ceiling_suspect`.
Work per step is counted from the HF config and the TP head plan: a decode step reads every weight once (the
embedding only for the looked-up rows), plus the KV cache positions the step's attention reads.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass

import torch

from ..model.config import DTYPES
from ..model.auto import parallel_plan
from ..model.backend.decoder import config_dict, head_dim_of
from ..model.backend.single_row import KERNELS
from ..runtime.huge_pages import huge_page_tensor

MIB = 2**20
CACHE_MULTIPLE = 2       # the read and matrix-vector buffers are at least this many times the last-level cache ...
MAX_BUFFER_MIB = 2048    # ... but never more than this (memory), and ...
DEFAULT_READ_MIB = 1024  # ... never less than these
DEFAULT_MATVEC_MIB = 256
MIN_SECONDS = 0.5        # per ceiling: keep calling until both `reps` calls and this much time have passed ...
MAX_REPS = 200           # ... but never more calls than this


@dataclass
class Ceilings:
    device: str
    dtype: str
    read_gbs: float              # plain read, GB/s (1e9 bytes)
    read_gbs_best: float
    matvec_gbs: float            # large matrix-vector in `dtype`, GB/s of weight read
    matvec_gbs_best: float
    matmul_gflops: float         # square matmul in `dtype`
    matmul_gflops_best: float
    seconds: float               # time the measurement took
    threads: int = 0             # torch threads the ceilings were measured with
    # the best call's rate in process CPU time: a call another process interrupts is not slower in CPU time, so on
    # a host where processes take turns on the cores this is the ceiling for rates measured in CPU time
    read_gbs_cpu_best: float = float("nan")
    matvec_gbs_cpu_best: float = float("nan")

    def columns(self) -> dict:
        return {f"ceiling_{k}": v for k, v in asdict(self).items() if k not in ("device", "dtype")}


def _median_and_best(fn, reps: int, sync, min_seconds: float = 0.0,
                     max_reps: int = MAX_REPS) -> tuple[float, float]:
    """Seconds per call: median and minimum of the timed calls after one warm-up call; at least `reps` calls and
    at least `min_seconds` of them in all (at most `max_reps` calls)."""
    fn()
    sync()
    times = []
    while len(times) < reps or (sum(times) < min_seconds and len(times) < max_reps):
        start = time.perf_counter_ns()
        fn()
        sync()
        times.append((time.perf_counter_ns() - start) / 1e9)
    times.sort()
    return times[len(times) // 2], times[0]


def best_cpu_seconds(fn, reps: int, sync) -> float:
    """The fewest process CPU seconds of `reps` calls (after one warm-up call)."""
    fn()
    sync()
    best = math.inf
    for _ in range(max(1, reps)):
        start = time.process_time_ns()
        fn()
        sync()
        best = min(best, (time.process_time_ns() - start) / 1e9)
    return best


def fraction_of(rate: float, ceiling: float) -> float:
    """rate / ceiling; NaN when the ceiling is not a positive finite number (nothing to be a fraction of)."""
    return rate / ceiling if ceiling > 0 and math.isfinite(ceiling) else float("nan")


def suspect_fractions(fractions: dict[str, float]) -> list[str]:
    """Names of the fractions a ceiling cannot explain: above 100%, or of no measurable ceiling (NaN)."""
    return [name for name, value in fractions.items() if not value <= 1.0]


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op thread count set to `threads` (when given) inside the block, restored after."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def last_level_cache_bytes(cache_dir: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """Size of the largest CPU cache the OS reports for cpu0 (its last level), in bytes; 0 where unknown."""
    import glob
    import os
    largest = 0
    for index in glob.glob(os.path.join(cache_dir, "index*")):
        try:
            with open(os.path.join(index, "size")) as f:
                text = f.read().strip().upper()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text[:-1] if text[-1:] in "KMG" else text
        if digits.isdigit():
            largest = max(largest, int(digits) * scale)
    return largest


def streaming_buffer_mib(floor_mib: int, cache_bytes: int) -> int:
    """MiB of a buffer that streams from memory: CACHE_MULTIPLE x the last-level cache, at least `floor_mib`, at most
    MAX_BUFFER_MIB (or `floor_mib` when that is larger)."""
    return max(floor_mib, min(MAX_BUFFER_MIB, -(-CACHE_MULTIPLE * cache_bytes // MIB)))


def measure_ceilings(dtype: str = "float32", device: str = "cpu", read_mib: int | None = None,
                     matvec_mib: int | None = None, matmul_n: int | None = None, reps: int = 5,
                     min_seconds: float = MIN_SECONDS, threads: int | None = None) -> Ceilings:
    """The three ceilings with `threads` torch threads (default: as set now), each the median and best of at least
    `reps` calls and `min_seconds`."""
    with torch_threads(threads) as used:
        ceilings = _measure(dtype, device, read_mib, matvec_mib, matmul_n, reps, min_seconds)
    ceilings.threads = used
    return ceilings


def _measure(dtype, device, read_mib, matvec_mib, matmul_n, reps, min_seconds) -> Ceilings:
    from .timing import synchronizer
    synced = synchronizer(device)

    def timed(fn):
        return _median_and_best(fn, reps, synced, min_seconds)

    cuda = str(device).startswith("cuda")
    cache = 0 if cuda else last_level_cache_bytes()
    read_mib = read_mib or (4096 if cuda else streaming_buffer_mib(DEFAULT_READ_MIB, cache))
    matvec_mib = matvec_mib or streaming_buffer_mib(DEFAULT_MATVEC_MIB, cache)
    matmul_n = matmul_n or (8192 if cuda else 1024)
    torch_dtype = DTYPES[dtype]
    start = time.perf_counter()
    with torch.no_grad():
        buffer = (torch.ones(read_mib * MIB // 4, dtype=torch.float32, device=device) if cuda
                  else huge_page_tensor((read_mib * MIB // 4,), torch.float32).fill_(1.0))
        t_med, t_best = timed(lambda: buffer.sum())
        read = (buffer.numel() * 4 / t_med / 1e9, buffer.numel() * 4 / t_best / 1e9)
        read_cpu = math.nan if cuda else buffer.numel() * 4 / best_cpu_seconds(lambda: buffer.sum(), reps, synced) / 1e9
        del buffer

        k = 4096
        n = max(1, matvec_mib * MIB // (k * torch_dtype.itemsize))
        weight = (torch.empty(n, k, dtype=torch_dtype, device=device) if cuda
                  else huge_page_tensor((n, k), torch_dtype)).uniform_(-1, 1)  # no fp32 copy of it
        x = torch.randn(1, k, device=device).to(torch_dtype)
        kernels = ([lambda: torch.nn.functional.linear(x, weight), lambda: torch.mv(weight, x[0])] if cuda
                   else [lambda kernel=kernel: kernel(x, weight) for kernel in KERNELS.values()])
        t_med, t_best = min((timed(kernel) for kernel in kernels),
                            key=lambda median_best: median_best[1])  # the fastest kernel by its best call
        nbytes = weight.numel() * weight.element_size()
        matvec = (nbytes / t_med / 1e9, nbytes / t_best / 1e9)
        matvec_cpu = math.nan if cuda else nbytes / min(best_cpu_seconds(kernel, reps, synced)
                                                        for kernel in kernels) / 1e9
        del weight, x

        a = torch.randn(matmul_n, matmul_n, device=device).to(torch_dtype)
        b = torch.randn(matmul_n, matmul_n, device=device).to(torch_dtype)
        t_med, t_best = min(timed(lambda: a @ b), timed(lambda: torch.nn.functional.linear(a, b)),
                             key=lambda median_best: median_best[1])  # the faster kernel by its best call
        flops = 2 * matmul_n**3
        matmul = (flops / t_med / 1e9, flops / t_best / 1e9)
    return Ceilings(str(device), dtype, read[0], read[1], matvec[0], matvec[1], matmul[0], matmul[1],
                    time.perf_counter() - start, read_gbs_cpu_best=read_cpu, matvec_gbs_cpu_best=matvec_cpu)


# -- work per step ---------------------------------------------------------------------------------------------
def moe_sizes(hf_config) -> dict:
    """experts / top_k / shared of a config (zeros for a dense one)."""
    return {"experts": int(getattr(hf_config, "num_local_experts", 0) or 0),
            "top_k": int(getattr(hf_config, "num_experts_per_tok", 1) or 1),
            "shared": int(getattr(hf_config, "shared_intermediate_size", 0) or 0)}


def hybrid_sizes(hf_config) -> dict:
    """A hybrid's Mamba layers and, per layer, its mixer's weights and its per-row SSM (fp32) and conv state
    elements ({} for a model without Mamba layers)."""
    from ..model.registry import architecture, hybrid_layer_kinds, mamba_sizes, sizes
    data = config_dict(hf_config)
    if not architecture(data.get("model_type")).hybrid:
        return {}
    dims = sizes(data)
    m = mamba_sizes(data, dims)
    h, inner, channels = dims["hidden"], m["mamba_inner"], m["mamba_conv_channels"]
    params = h * m["mamba_projection"] + channels * m["mamba_conv"] + inner * h + 3 * m["mamba_heads"] + inner
    params += channels if data.get("mamba_conv_bias", True) else 0
    params += m["mamba_projection"] + h if data.get("mamba_proj_bias", False) else 0
    return {"mamba_layers": hybrid_layer_kinds(data.get("layer_types"), dims["layers"]).count("mamba"),
            "mamba_params": params, "ssm_state": m["mamba_heads"] * m["mamba_head_dim"] * m["mamba_state"],
            "conv_state": channels * (m["mamba_conv"] - 1)}


def window_sizes(hf_config) -> dict[str, int]:
    """Layers with a sliding-window KV cache and their window (zeros when the config has none)."""
    window = int(getattr(hf_config, "sliding_window", 0) or 0)
    kinds = getattr(hf_config, "layer_types", None) or []
    sliding = sum(kind == "sliding_attention" for kind in kinds) if window else 0
    return {"sliding_layers": sliding, "window": window}


@dataclass(frozen=True)
class ModelShape:
    """The sizes the byte and FLOP counts need, for one TP degree (sums over all ranks)."""

    hidden: int
    intermediate: int
    layers: int
    vocab_padded: int
    q_heads: int           # query heads over all ranks, padding heads included
    kv_heads: int          # KV heads over all ranks, replicas included
    head_dim: int
    attention_bias: bool
    mlp_bias: bool
    experts: int = 0       # routed experts per layer (0: a dense MLP of `intermediate`)
    top_k: int = 1         # experts each token uses
    shared: int = 0        # intermediate size of a shared MLP beside the experts
    mamba_layers: int = 0  # hybrids: layers whose mixer is Mamba2 instead of attention
    mamba_params: int = 0  # one Mamba2 mixer's weights
    ssm_state: int = 0     # one Mamba layer's SSM state elements per row (fp32)
    conv_state: int = 0    # one Mamba layer's conv state elements per row (model dtype)
    sliding_layers: int = 0   # layers whose KV cache is a window of `window` positions (sliding-window attention)
    window: int = 0

    @classmethod
    def of(cls, hf_config, tp_degree: int = 1) -> "ModelShape":
        plan = parallel_plan(hf_config, tp_degree)
        vocab = hf_config.vocab_size
        return cls(hidden=hf_config.hidden_size, intermediate=hf_config.intermediate_size,
                   layers=hf_config.num_hidden_layers, vocab_padded=-(-vocab // tp_degree) * tp_degree,
                   q_heads=plan.q_heads_per_rank * tp_degree, kv_heads=plan.kv_heads_per_rank * tp_degree,
                   head_dim=plan.head_dim, attention_bias=bool(getattr(hf_config, "attention_bias", False)),
                   mlp_bias=bool(getattr(hf_config, "mlp_bias", False)), **moe_sizes(hf_config),
                   **hybrid_sizes(hf_config), **window_sizes(hf_config))

    @classmethod
    def hf(cls, hf_config) -> "ModelShape":
        """HF's own layout: original heads, no vocabulary padding."""
        return cls(hidden=hf_config.hidden_size, intermediate=hf_config.intermediate_size,
                   layers=hf_config.num_hidden_layers, vocab_padded=hf_config.vocab_size,
                   q_heads=hf_config.num_attention_heads, kv_heads=hf_config.num_key_value_heads,
                   head_dim=head_dim_of(hf_config), attention_bias=bool(getattr(hf_config, "attention_bias", False)),
                   mlp_bias=bool(getattr(hf_config, "mlp_bias", False)), **moe_sizes(hf_config),
                   **hybrid_sizes(hf_config), **window_sizes(hf_config))

    def attention_params(self) -> int:
        """One attention mixer's weights (Q/K/V and O projections, their biases)."""
        h, d = self.hidden, self.head_dim
        bias = (self.q_heads + 2 * self.kv_heads) * d + h if self.attention_bias else 0
        return h * (self.q_heads + 2 * self.kv_heads) * d + self.q_heads * d * h + bias

    def mixer_swap(self) -> int:
        """What a hybrid's Mamba layers hold beyond attention layers (their mixers instead of attention's)."""
        return self.mamba_layers * (self.mamba_params - self.attention_params())

    def state_bytes_per_step(self, batch: int, itemsize: int) -> int:
        """Mamba states a decode step reads and writes back: the fp32 SSM state and the conv state, per row."""
        return self.mamba_layers * batch * 2 * (self.ssm_state * 4 + self.conv_state * itemsize)

    def active_experts(self, tokens: int) -> float:
        """Distinct experts `tokens` tokens choose in one layer: exactly top_k for one token; for more, the expected
        count under uniform routing, E·(1 - (1 - k/E)^tokens) (each chosen expert's weights are read once)."""
        if tokens <= 1:
            return float(self.top_k)
        return self.experts * (1 - (1 - self.top_k / self.experts) ** tokens)

    def layer_linear_params(self, experts_read: float | None = None) -> float:
        """Weights of one layer's projections that a step reads; a MoE layer reads `experts_read` experts (default:
        the top_k one token uses) besides its router and shared MLP."""
        h, d = self.hidden, self.head_dim
        qkv = h * (self.q_heads + 2 * self.kv_heads) * d
        out = self.q_heads * d * h
        if self.experts:
            used = self.top_k if experts_read is None else experts_read
            mlp = 3 * h * self.intermediate * used + self.experts * h + 3 * h * self.shared
        else:   # a dense MLP, or a hybrid without experts: its shared MLP alone
            mlp = 3 * h * (self.shared or self.intermediate)
        bias = ((self.q_heads + 2 * self.kv_heads) * d + h if self.attention_bias else 0) + \
               (2 * self.intermediate + h if self.mlp_bias else 0)
        return qkv + out + mlp + bias

    def weight_elements_per_step(self, batch: int) -> float:
        """Weights one decode step reads: every layer (a MoE layer: the experts its `batch` tokens choose), the norms,
        the LM head, and `batch` embedding rows."""
        read = self.active_experts(batch) if self.experts else None
        layers = self.layers * (self.layer_linear_params(read) + 2 * self.hidden) + self.mixer_swap()
        return layers + self.hidden + self.vocab_padded * self.hidden + batch * self.hidden

    def kv_elements_read(self, batch: int, kv_len: int) -> int:
        """K and V a decode step reads: kv_len positions in a full attention layer, at most `window` in a sliding
        one, none in a hybrid's Mamba layers."""
        full = self.layers - self.mamba_layers - self.sliding_layers
        positions = full * kv_len + self.sliding_layers * min(kv_len, self.window)
        return 2 * batch * self.kv_heads * positions * self.head_dim

    def decode_bytes(self, batch: int, kv_len: float, itemsize: int) -> float:
        return ((self.weight_elements_per_step(batch) + self.kv_elements_read(batch, kv_len)) * itemsize
                + self.state_bytes_per_step(batch, itemsize))

    def attention_keys(self, length: int) -> tuple[int, int]:
        """(keys a full layer's prefill scores over `length` queries, keys a sliding layer's): the full square
        length², as a full layer computes it; a sliding layer's query i sees min(i + 1, W) keys."""
        if not self.window:
            return length * length, length * length
        w = min(self.window, length)
        return length * length, w * (w + 1) // 2 + (length - w) * w   # queries 0..w-1 see i+1 keys, the rest w

    def prefill_flops(self, batch: int, length: int, all_logits: bool = False) -> float:
        """Matmul FLOPs of context encoding over `length` positions per row (a full layer's attention over the full
        square, as computed; a sliding layer's over each query's window; a Mamba layer's projections, not its
        scan)."""
        tokens = batch * length
        linear = 2 * tokens * (self.layers * self.layer_linear_params() + self.mixer_swap())
        full_keys, sliding_keys = self.attention_keys(length)
        full = self.layers - self.mamba_layers - self.sliding_layers
        keys = full * full_keys + self.sliding_layers * sliding_keys
        attention = 2 * 2 * batch * self.q_heads * keys * self.head_dim   # QK^T and PV
        head = 2 * (tokens if all_logits else batch) * self.hidden * self.vocab_padded
        return float(linear + attention + head)
