"""Measuring one grid point: the implementation and its HF baselines, interleaved round by round, then the rows.

Per point and implementation, `warmup` untimed generations run first (graph compilation happens there), then
`rounds` timed ones. Within a round the implementations take turns, and the order rotates every round, so noise
on a shared machine falls on all of them alike. Each generation gives one time to first token, new_tokens - 1
decode steps and one end-to-end latency.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..model.config import pick_bucket
from .grid import GridSpec, PerfPoint
from .roofline import Ceilings, ModelShape, fraction_of, measure_ceilings, suspect_fractions
from ..results.stats import prefixed, summarize
from .timing import (GenerationTiming, device_peak_bytes, peak_rss_bytes, reset_device_peak, reset_peak_rss,
                     synchronizer, time_runner_generation)

IMPL = "granite"
NS_PER_MS = 1e-6


def interleaved_rounds(contestants: dict[str, Callable[[], GenerationTiming]], rounds: int,
                       warmup: int) -> dict[str, list[GenerationTiming]]:
    """Run every contestant warmup + rounds times, rotating the order each round; keep the timed rounds."""
    names = list(contestants)
    timed: dict[str, list[GenerationTiming]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            timing = contestants[name]()
            if r >= warmup:
                timed[name].append(timing)
    return timed


def make_prompts(point: PerfPoint, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """batch_size prompts of prompt_len token ids, fixed by the seed (ids 3.. avoid the usual special tokens)."""
    gen = torch.Generator().manual_seed(seed + point.prompt_len)
    low = min(3, vocab_size - 1)
    return torch.randint(low, vocab_size, (point.batch_size, point.prompt_len), generator=gen).tolist()


# -- what each implementation computes per step ------------------------------------------------------------------
def step_positions(point: PerfPoint) -> list[int]:
    """Position written by each decode step (the first new token is written at prompt_len)."""
    return [point.prompt_len + step - 1 for step in range(1, point.new_tokens)]


def kv_lengths(impl: str, point: PerfPoint, generation_buckets: list[int]) -> list[int]:
    """KV positions each decode step's attention reads."""
    positions = step_positions(point)
    if impl == IMPL:
        return [pick_bucket(generation_buckets, pos + 1, "sequence") for pos in positions]
    if impl == "hf_static":  # HF sizes the static cache to prompt + max_new_tokens and attends over all of it
        return [point.prompt_len + point.new_tokens] * len(positions)
    return [pos + 1 for pos in positions]


def padding_waste(impl: str, point: PerfPoint, kv_lens: list[int]) -> dict:
    """Share of computed positions that were padding: prefill (bucket padding) and decode (masked KV slots)."""
    real_prefill = point.batch_size * point.prompt_len
    computed_prefill = point.batch_size * (point.bucket if impl == IMPL else point.prompt_len)
    real_kv = sum(pos + 1 for pos in step_positions(point))
    return {"padding_waste_prefill": 1 - real_prefill / computed_prefill,
            "padding_waste_decode": 1 - real_kv / sum(kv_lens) if kv_lens else 0.0}


# -- rows --------------------------------------------------------------------------------------------------------
def sample_rows(point: PerfPoint, timed: dict[str, list[GenerationTiming]]) -> list[dict]:
    """One row per latency sample: phase ttft (step 0), tpot (step 1..N-1), e2e."""
    base = point.columns()
    rows = []
    for impl, timings in timed.items():
        for rnd, t in enumerate(timings):
            rows.append({**base, "impl": impl, "round": rnd, "phase": "ttft", "step": 0, "latency_ns": t.ttft_ns})
            rows += [{**base, "impl": impl, "round": rnd, "phase": "tpot", "step": i + 1, "latency_ns": ns}
                     for i, ns in enumerate(t.step_ns)]
            rows.append({**base, "impl": impl, "round": rnd, "phase": "e2e", "step": point.new_tokens - 1,
                         "latency_ns": t.e2e_ns})
    return rows


@dataclass
class PointContext:
    """Everything besides the timings that a point's summary needs."""

    hf_config: object
    generation_buckets: list[int]
    ceilings: Ceilings
    itemsize: int
    compile_seconds: dict[str, float]
    peak_rss_bytes: int
    device_peak_bytes: int | None
    threads: dict
    cpu: dict = field(default_factory=dict)    # perf.cpu.cpu_kind_columns(): which kind of CPU was measured
    hf_attention: str = "sdpa"                 # the attention the HF baselines ran (hf_baseline.hf_attention)
    kv_cache: dict = field(default_factory=dict)   # the runner's KV cache per layer kind (kv_cache_columns)


def roofline_fractions(decode_gbs: float, prefill_gflops: float, ceilings: Ceilings,
                       decode_gbs_cpu: float | None = None) -> dict:
    """Fractions of the best measured ceilings, and `ceiling_suspect` when one is above 100% (or has no ceiling):
    kept as measured, flagged, never clipped. `decode_gbs_cpu` (bytes per CPU-time second of a step) adds
    decode_frac_matvec_cpu, of the matrix-vector ceiling's best call in CPU time (when that was measured)."""
    fractions = {"decode_frac_matvec": fraction_of(decode_gbs, ceilings.matvec_gbs_best),
                 "decode_frac_read": fraction_of(decode_gbs, ceilings.read_gbs_best),
                 "prefill_frac_matmul": fraction_of(prefill_gflops, ceilings.matmul_gflops_best)}
    if decode_gbs_cpu is not None and math.isfinite(ceilings.matvec_gbs_cpu_best):
        fractions["decode_frac_matvec_cpu"] = fraction_of(decode_gbs_cpu, ceilings.matvec_gbs_cpu_best)
    suspect = suspect_fractions(fractions)
    return {**fractions, "ceiling_suspect": bool(suspect), "ceiling_suspect_of": ",".join(suspect)}


def cpu_time_columns(timings: list[GenerationTiming], step_bytes: float) -> dict:
    """Median time to first token and per decode step in process CPU time, and the decode bandwidth per CPU-time
    second; {} when the timings carry no CPU time. On a host where other processes take turns on the cores, wall
    time counts their turns and CPU time does not: the two side by side show how much of a time was waiting."""
    if any(t.ttft_cpu_ns is None or t.step_cpu_ns is None for t in timings):
        return {}
    ttft = summarize([t.ttft_cpu_ns for t in timings], NS_PER_MS)["p50"]
    tpot = summarize([ns for t in timings for ns in t.step_cpu_ns], NS_PER_MS)["p50"]
    return {"ttft_cpu_p50_ms": ttft, "tpot_cpu_p50_ms": tpot,
            "decode_gbs_cpu": step_bytes / (tpot * 1e-3) / 1e9 if tpot > 0 else float("nan")}


def summary_rows(point: PerfPoint, timed: dict[str, list[GenerationTiming]], ctx: PointContext) -> list[dict]:
    """One row per implementation: latency statistics, throughput, roofline fractions; ratios on the impl row."""
    rows = {}
    for impl, timings in timed.items():
        shape = ModelShape.of(ctx.hf_config, point.tp) if impl == IMPL else ModelShape.hf(ctx.hf_config)
        ttft = summarize([t.ttft_ns for t in timings], NS_PER_MS)
        tpot = summarize([ns for t in timings for ns in t.step_ns], NS_PER_MS)
        e2e = summarize([t.e2e_ns for t in timings], NS_PER_MS)
        kv_lens = kv_lengths(impl, point, ctx.generation_buckets)
        kv_mean = sum(kv_lens) / len(kv_lens)
        step_bytes = shape.decode_bytes(point.batch_size, kv_mean, ctx.itemsize)
        prefill_len = point.bucket if impl == IMPL else point.prompt_len
        flops = shape.prefill_flops(point.batch_size, prefill_len)
        decode_gbs = step_bytes / (tpot["p50"] * 1e-3) / 1e9
        prefill_gflops = flops / (ttft["p50"] * 1e-3) / 1e9
        e2e_s = e2e["p50"] * 1e-3
        cpu = cpu_time_columns(timings, step_bytes) if point.tp == 1 else {}   # TP ranks run in other processes
        rows[impl] = {
            **point.columns(), "impl": impl, "rounds": len(timings),
            **prefixed("ttft", ttft, "ms"), **prefixed("tpot", tpot, "ms"), **prefixed("e2e", e2e, "ms"),
            "output_tok_s": point.batch_size * point.new_tokens / e2e_s,
            "total_tok_s": point.batch_size * (point.prompt_len + point.new_tokens) / e2e_s,
            "decode_tok_s": point.batch_size / (tpot["p50"] * 1e-3),
            "kv_len_mean": kv_mean, "decode_bytes_per_step": step_bytes, "decode_gbs": decode_gbs,
            **cpu,
            **roofline_fractions(decode_gbs, prefill_gflops, ctx.ceilings, cpu.get("decode_gbs_cpu")),
            "prefill_flops": flops, "prefill_gflops": prefill_gflops,
            **padding_waste(impl, point, kv_lens),
            **ctx.ceilings.columns(),
            "peak_rss_mb": ctx.peak_rss_bytes / 2**20,
            "device_peak_mb": ctx.device_peak_bytes / 2**20 if ctx.device_peak_bytes is not None else None,
            **ctx.threads, **ctx.cpu, **(ctx.kv_cache if impl == IMPL else {}),
        }
        if impl != IMPL:
            from .hf_baseline import HF_EXPERTS, HF_IMPLEMENTATIONS
            rows[impl].update(hf_attn_implementation=ctx.hf_attention,
                              hf_cache_implementation=HF_IMPLEMENTATIONS.get(impl) or "dynamic")
            if shape.experts:   # text column, MoE models only (an all-missing column would read as numeric)
                rows[impl]["hf_experts_implementation"] = HF_EXPERTS[impl]
    if IMPL in rows:
        ours = rows[IMPL]
        ours["compile_seconds_total"] = float(sum(ctx.compile_seconds.values()))
        ours["compile_seconds_json"] = json.dumps(ctx.compile_seconds, sort_keys=True)
        for base in (name for name in rows if name != IMPL):
            for metric in ("ttft", "tpot", "e2e", "ttft_cpu", "tpot_cpu"):
                if f"{metric}_p50_ms" in ours and f"{metric}_p50_ms" in rows[base]:
                    ours[f"{metric}_ratio_{base}"] = ours[f"{metric}_p50_ms"] / rows[base][f"{metric}_p50_ms"]
    return list(rows.values())


def kv_cache_layout(runner) -> dict[str, dict[str, int]]:
    """The runner's KV cache per layer kind (contract.Runner.kv_cache_layout: one rank's, as allocated); {} from a
    runner that cannot say."""
    ask = getattr(runner, "kv_cache_layout", None)
    return ask() if callable(ask) else {}


def kv_cache_columns(layout: dict[str, dict[str, int]]) -> dict:
    """Summary columns of a KV cache layout: kv_cache_bytes (all layers, one rank), kv_cache_<kind>_<layers | slots |
    bytes_per_slot | bytes> per layer kind, and the layout itself as JSON (kv_cache_json); {} for none."""
    if not layout:
        return {}
    columns = {"kv_cache_bytes": sum(entry["bytes"] for entry in layout.values()),
               "kv_cache_json": json.dumps(layout, sort_keys=True)}
    for kind, entry in layout.items():
        columns.update({f"kv_cache_{kind}_{name}": value for name, value in entry.items()})
    return columns


# -- a sweep session: runners, HF models and ceilings built once and reused ----------------------------------------
def graphs_used(point: PerfPoint, generation_buckets: list[int]) -> list[tuple[str, int]]:
    kv = sorted(set(kv_lengths(IMPL, point, generation_buckets)))
    return [("context_encoding", point.bucket)] + [("token_generation", k) for k in kv]


def compile_times(runner, point: PerfPoint) -> dict[str, float]:
    """Compile seconds of each graph this point ran ('token_generation[256]': s), whenever it was compiled."""
    compiled = getattr(getattr(runner, "graphs", None), "compile_seconds", None) or {}
    used = graphs_used(point, list(runner.neuron_config.token_generation_buckets))
    return {f"{phase}[{bucket}]": float(compiled[(phase, bucket)]) for phase, bucket in used
            if (phase, bucket) in compiled}


def load_average() -> float | None:
    """The host's 1-minute load average: how busy the machine was around a point (timings on a shared machine)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def rank_threads(point: PerfPoint, threads: dict) -> int:
    """torch threads each rank runs with: the driver's at tp 1, the TP runner's share of the cores otherwise."""
    if point.tp == 1:
        return threads.get("torch_threads", 1)
    from ..runtime.tp_runner import threads_per_rank
    return threads_per_rank(point.tp)


def worker_pids(runner) -> list[int]:
    """Process ids of a TP runner's worker ranks (none for a single-process runner)."""
    return [int(p.pid) for p in getattr(runner, "processes", None) or [] if getattr(p, "pid", None)]


class SweepSession:
    """Runs points one at a time, keeping the current runner, HF model and ceilings for the next point."""

    def __init__(self, spec: GridSpec, threads: dict, build_runner=None, load_hf=None, ceilings_fn=None):
        self.spec = spec
        self.threads = threads
        self._build_runner = build_runner or default_build_runner
        self._load_hf = load_hf or default_load_hf
        self._ceilings_fn = ceilings_fn or measure_ceilings
        self.runner = None
        self._group = None
        self.hf_model = None
        self._hf_key = None
        self.ceilings: dict[tuple[str, str], Ceilings] = {}
        from .cpu import cpu_kind_columns
        self.cpu = cpu_kind_columns()

    def runner_for(self, point: PerfPoint):
        if self._group != point.runner_group:
            self.close_runner()
            self.runner = self._build_runner(point, self.spec)
            self._group = point.runner_group
        return self.runner

    def hf_for(self, point: PerfPoint, model_dir):
        key = (str(model_dir), point.dtype, point.device)
        if self._hf_key != key:
            self.hf_model = None
            self.hf_model = self._load_hf(model_dir, point.dtype, point.device)
            self._hf_key = key
        return self.hf_model

    def ceilings_for(self, point: PerfPoint) -> Ceilings:
        """The ceilings with as many torch threads as the point runs with in all (ranks x threads per rank)."""
        threads = point.tp * rank_threads(point, self.threads)
        key = (point.dtype, point.device, threads)
        if key not in self.ceilings:
            self.ceilings[key] = self._ceilings_fn(point.dtype, point.device, threads=threads)
        return self.ceilings[key]

    def measure(self, point: PerfPoint) -> tuple[list[dict], list[dict]]:
        """(sample rows, summary rows) of one point."""
        runner = self.runner_for(point)
        ceilings = self.ceilings_for(point)
        sync = synchronizer(point.device)
        hf_config = runner.hf_config
        prompts = make_prompts(point, hf_config.vocab_size)
        contestants = {IMPL: lambda: time_runner_generation(runner, prompts, point.new_tokens, sync)}
        if self.spec.baselines:
            from .hf_baseline import HF_IMPLEMENTATIONS, time_hf_generation, use_experts_implementation
            hf = self.hf_for(point, runner.model_dir)
            pad = hf_config.pad_token_id if hf_config.pad_token_id is not None else 0

            def hf_run(name):
                use_experts_implementation(hf, name)   # MoE: this baseline's experts kernel (interleaved rounds)
                return time_hf_generation(hf, prompts, point.new_tokens, HF_IMPLEMENTATIONS[name], sync, pad)
            for name in self.spec.baselines:
                contestants[name] = lambda name=name: hf_run(name)
        pids = worker_pids(runner)
        load_start = load_average()
        reset_peak_rss(pids)
        reset_device_peak(point.device)
        # a compiled graph compiles on its first call: that call is never a timed one
        warmup = max(self.spec.warmup, 1 if point.compile else 0)
        timed = interleaved_rounds(contestants, self.spec.rounds, warmup)
        generation_buckets = list(runner.neuron_config.token_generation_buckets)
        itemsize = torch.empty(0, dtype=runner.neuron_config.dtype).element_size()
        ctx = PointContext(hf_config, generation_buckets, ceilings, itemsize, compile_times(runner, point),
                           peak_rss_bytes(pids), device_peak_bytes(point.device),
                           {**self.threads, "threads_per_rank": rank_threads(point, self.threads),
                            "load_avg_1m_start": load_start, "load_avg_1m_end": load_average()},
                           self.cpu, hf_attention=self.hf_attention_of(runner),
                           kv_cache=kv_cache_columns(kv_cache_layout(runner)))
        return sample_rows(point, timed), summary_rows(point, timed, ctx)

    def hf_attention_of(self, runner) -> str:
        """The attention the HF baselines run on this runner's checkpoint ("sdpa" when there are none)."""
        if not self.spec.baselines:
            return "sdpa"
        from .hf_baseline import hf_attention
        return hf_attention(runner.model_dir)

    def close_runner(self) -> None:
        if self.runner is not None:
            runner, self.runner, self._group = self.runner, None, None
            runner.close()

    def close(self) -> None:
        self.close_runner()
        self.hf_model = None


def default_build_runner(point: PerfPoint, spec: GridSpec):
    """The runner for a point's group: its batch size, every context bucket of the grid, last-position logits only
    (what a serving graph computes, and what HF generate computes)."""
    from ..runtime.runner import build_neuron_config
    from ..runtime.select import build_runner
    config = build_neuron_config(batch_size=point.batch_size, seq_len=point.seq_len, buckets=sorted(spec.buckets),
                                 tp_degree=point.tp, dtype=point.dtype, output_logits=False)
    runner = build_runner(point.model, dtype=point.dtype, device=point.device, tp_degree=point.tp,
                          batch_size=point.batch_size, seq_len=point.seq_len, buckets=sorted(spec.buckets),
                          compile=point.compile, num_layers=point.layers, neuron_config=config)
    if point.device == "cpu" and hasattr(runner, "model"):
        # a memory-bound decode streams weights from 2 MiB pages fastest. Only here: the move holds the model plus its
        # largest tensor for a moment, and parity keeps its peak at the weights + 25 % (issue 11).
        from ..runtime.huge_pages import move_to_huge_pages
        move_to_huge_pages(runner.model)
    return runner


def default_load_hf(model_dir, dtype: str, device: str):
    from .hf_baseline import load_hf_model
    return load_hf_model(model_dir, dtype, device)
