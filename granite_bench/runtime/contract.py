"""The runner contract parity, perf and eval program against. GraniteRunner (one process), TPRunner (tp ranks
driven SPMD) and NeuronRunner (graphs traced for NeuronCores) implement it; `select.build_runner` picks one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Protocol, runtime_checkable

import torch

from ..model.config import NeuronConfig
from .generation import GenerationResult


@runtime_checkable
class CompileInfo(Protocol):
    """What was compiled and run, per (phase, bucket) graph."""

    compile: bool
    compile_counts: Any          # Counter {(phase, bucket): times compiled}
    compile_seconds: dict        # {(phase, bucket): seconds of its one compilation}
    calls: Any                   # Counter {(phase, bucket): calls}

    def info(self) -> dict: ...  # the same as plain, picklable data


@runtime_checkable
class Runner(Protocol):
    model_dir: Path              # the checkpoint directory it loaded (the HF reference loads the same files)
    hf_config: Any               # the HF config (or its attributes, on TP ranks)
    neuron_config: NeuronConfig  # batch size, buckets, sequence length, tp degree, dtype, output_logits
    device: str
    init: dict                   # how the weights were made (seed, preset) for the results
    load_seconds: float
    graphs: CompileInfo

    def context_encode(self, input_ids: list[list[int]], capture_hidden: bool = False,
                       capture_position: int | None = None):
        """Logits [rows, max_len, V] float32 (output_logits on) or [rows, 1, V] (off: each row's last position);
        with capture_hidden also the per-layer hidden states [(layer, sub, Tensor[rows, max_len, H])], only at
        `capture_position` ([rows, 1, H]) when given."""

    def token_generate(self, next_ids: torch.Tensor, positions: torch.Tensor, capture_hidden: bool = False):
        """One token per row at `positions` [B]; logits [B, V] float32."""

    def generate(self, prompts: list[list[int]], max_new_tokens: int,
                 stop_token_ids: Iterable[int] = ()) -> GenerationResult:
        """The greedy loop of `generation.greedy_generate` over this runner."""

    def reset(self) -> None:
        """Forget the KV cache."""

    def close(self) -> None:
        """Release processes and devices (safe to call twice)."""

    def kv_cache_layout(self) -> dict:
        """One rank's KV cache per layer kind as allocated: {kind: {"layers", "slots" (per layer), "bytes_per_slot",
        "bytes"}}; {} where the runner cannot see it."""
