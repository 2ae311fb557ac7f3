"""The single-process runner (contract.Runner; `select.build_runner` builds it): `context_encode`,
`token_generate`, and `generate` through the one greedy loop. Inputs are padded to the compiled batch size and to a bucket, so every call runs one of a fixed set of
static graphs (one per phase and bucket), as on Neuron."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from ..model.auto import build_model, convert_checkpoint
from ..model.backend import parallel_state as ps
from ..model.backend.checkpoint import load_hf_state_dict
from ..model.backend.single_row import choose_for_model
from ..model.config import BucketError, NeuronConfig, pick_bucket
from .errors import InputError
from .generation import GenerationResult, greedy_generate
from .graphs import GraphSet

PAD_TOKEN = 0


def build_neuron_config(batch_size: int = 1, seq_len: int = 256, buckets: list[int] | None = None,
                        tp_degree: int = 1, dtype: str = "float32", max_context_length: int | None = None,
                        output_logits: bool = True, fused_qkv: bool = True, moe_ep_degree: int = 1,
                        ssm_state_dtype: str = "float32") -> NeuronConfig:
    """`ssm_state_dtype` other than float32 goes into `extra` (read by hybrid models' state cache)."""
    return NeuronConfig(batch_size=batch_size, sequence_length=seq_len, tp_degree=tp_degree, torch_dtype=dtype,
                        max_context_length=max_context_length or (max(buckets) if buckets else None),
                        context_encoding_buckets=buckets, output_logits=output_logits, fused_qkv=fused_qkv,
                        moe_ep_degree=moe_ep_degree,
                        extra={"ssm_state_dtype": ssm_state_dtype} if ssm_state_dtype != "float32" else {})


def load_rank_model(model_dir: Path, hf_config, neuron_config: NeuronConfig, device: str = "cpu",
                    hf_state: dict | None = None, shard: dict | None = None) -> torch.nn.Module:
    """This rank's model: modules built with per-rank shapes, then its converted shard loaded strictly
    (`shard`: an already converted rank state dict, as the TP workers read from their sharded checkpoint)."""
    tp, rank = ps.get_tensor_model_parallel_size(), ps.get_tensor_model_parallel_rank()
    with torch.device("meta"):
        model = build_model(hf_config, neuron_config)
    if shard is not None:
        state = shard
    else:
        state = convert_checkpoint(hf_state if hf_state is not None else load_hf_state_dict(model_dir),
                                   hf_config, rank, tp, neuron_config)
    model = model.to_empty(device=device)
    model.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers were left uninitialised by to_empty: rebuild the rope tables, zero the caches.
    model.reset_static_buffers(device)
    if device == "cpu" and neuron_config.dtype == torch.float32:
        for module in model.modules():   # the LM head, MoE experts: short-row matrices stream faster laid out [in, out]
            if hasattr(module, "use_input_major_layout"):
                module.use_input_major_layout()
    if device == "cpu":
        choose_for_model(model)   # the one-row bf16/fp16 kernel, measured here before any graph is compiled
    return model.eval()


class GraniteRunner:
    """Single-process runner (tp_degree 1, or one rank of a TP group driven SPMD); implements contract.Runner."""

    def __init__(self, model: torch.nn.Module, model_dir: Path, hf_config, neuron_config: NeuronConfig,
                 device: str = "cpu", compile: bool = False, init: dict | None = None):
        self.model = model
        self.model_dir = Path(model_dir)
        self.hf_config = hf_config
        self.neuron_config = neuron_config
        self.device = device
        if init is None:  # TP workers pass it in: they must not import transformers (slow start-up)
            from ..reference.weights import read_init
            init = read_init(model_dir)
        self.init = init
        self.graphs = GraphSet(model, compile=compile)
        self.load_seconds = 0.0

    # -- static-shape entry points ---------------------------------------------------------------------------
    def pad_rows(self, rows: int) -> int:
        if rows > self.neuron_config.batch_size:
            raise InputError(f"{rows} prompts exceed the compiled batch size {self.neuron_config.batch_size}: "
                             f"raise --batch-size or pass fewer prompts")
        return self.neuron_config.batch_size - rows

    @torch.no_grad()
    def context_encode(self, input_ids: list[list[int]], capture_hidden: bool = False,
                       capture_position: int | None = None):
        """Right-pad to a bucket and the batch size; logits [rows, max_len, V] (float32) of every position.
        capture_hidden: also each sub-block's residual stream [rows, max_len, H], or [rows, 1, H] at
        `capture_position` only."""
        if not input_ids or any(len(row) == 0 for row in input_ids):
            raise InputError("every prompt needs at least one token")
        longest = max(len(row) for row in input_ids)
        try:
            bucket = pick_bucket(self.neuron_config.context_encoding_buckets, longest, "prompt")
        except BucketError as err:
            raise InputError(str(err)) from None
        rows = list(input_ids) + [[PAD_TOKEN]] * self.pad_rows(len(input_ids))
        ids = torch.full((len(rows), bucket), PAD_TOKEN, dtype=torch.long)
        mask = torch.zeros((len(rows), bucket), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        capture = HiddenCapture(capture_position) if capture_hidden else None
        logits = self.graphs.context_encoding(bucket, ids.to(self.device), mask.to(self.device), capture)
        logits = logits[:len(input_ids), :longest].cpu()
        return (logits, stack_capture(capture, len(input_ids), longest)) if capture_hidden else logits

    @torch.no_grad()
    def token_generate(self, next_ids: torch.Tensor, positions: torch.Tensor, capture_hidden: bool = False):
        """One token per row at `positions` [B]; logits [B, V] (float32)."""
        rows = len(next_ids)
        needed = int(positions.max()) + 1
        if needed > self.neuron_config.sequence_length:
            raise InputError(f"position {needed - 1} is past the KV cache (sequence_length "
                             f"{self.neuron_config.sequence_length}): raise --seq-len or generate fewer tokens")
        kv_len = pick_bucket(self.neuron_config.token_generation_buckets, needed, "sequence")
        pad = self.pad_rows(rows)
        ids = torch.cat([next_ids.long().cpu(), torch.full((pad,), PAD_TOKEN)]).view(-1, 1)
        pos = torch.cat([positions.long().cpu(), torch.zeros(pad, dtype=torch.long)])
        capture = HiddenCapture() if capture_hidden else None
        logits = self.graphs.token_generation(kv_len, ids.to(self.device), pos.to(self.device), capture)
        logits = logits[:rows, 0].cpu()
        return (logits, stack_capture(capture, rows, 1)) if capture_hidden else logits

    def reset(self) -> None:
        self.model.kv_cache.reset()

    def kv_cache_layout(self) -> dict[str, dict[str, int]]:
        """This rank's KV cache per layer kind, as allocated ({kind: layers, slots, bytes_per_slot, bytes}); {} where
        the cache lives elsewhere (a device's graphs)."""
        layout = getattr(self.model.kv_cache, "kv_bytes_per_layer_kind", None)
        return layout() if callable(layout) else {}

    def generate(self, prompts: list[list[int]], max_new_tokens: int,
                 stop_token_ids: Iterable[int] = ()) -> GenerationResult:
        """Greedy decode through the one loop (generation.greedy_generate), stopping early on stop tokens."""
        return greedy_generate(self, prompts, max_new_tokens, stop_token_ids)

    def close(self) -> None:
        """Nothing to release in one process (the TP runner stops its ranks here)."""


class HiddenCapture(list):
    """What the model's layers append while they run: (sub, residual stream [B, L, H]) per sub-block, each kept as a
    float32 CPU copy as it is made, of one position only when `position` is given. Localisation needs one position;
    a full-depth model's streams at every position of a batch are hundreds of MB (2B, 4 x 128 tokens: 336 MB)."""

    def __init__(self, position: int | None = None):
        super().__init__()
        self.position = position

    def append(self, item) -> None:
        layer, sub, hidden = item
        if self.position is not None:
            hidden = hidden[:, self.position:self.position + 1]
        super().append((layer, sub, hidden.to(device="cpu", dtype=torch.float32, copy=True)))


def stack_capture(capture: HiddenCapture, rows: int, length: int):
    """[(layer, sub, Tensor[B, L, X])] trimmed to the real rows and positions (L = 1 for a one-position capture)."""
    length = 1 if capture.position is not None else length
    return [(layer, sub, hidden[:rows, :length]) for layer, sub, hidden in capture]
