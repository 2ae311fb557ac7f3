"""HF Transformers side by side: the same checkpoint files through HF's own model class (GraniteForCausalLM,
GraniteMoeForCausalLM, ...) and its `generate`, timed per token.

Two baselines, as a user would run HF: `eager` (generate with its default dynamic cache) and `static`
(`cache_implementation="static"`; HF compiles it on its own only on accelerators). A logits processor stamps the
clock each time a token's logits arrive, so one generate call yields time to first token and every decode step.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel

from ..model.config import DTYPES
from ..reference.hf_classes import checkpoint_architecture, hf_model_class
from .timing import GenerationTiming, now_ns

HF_IMPLEMENTATIONS = {"hf_eager": None, "hf_static": "static", "hf_grouped_mm": None,
                      "hf_batched_mm": None}   # name -> cache_implementation
# name -> HF's experts implementation (MoE models; transformers' own default is grouped_mm)
HF_EXPERTS = {"hf_eager": "eager", "hf_static": "eager", "hf_grouped_mm": "grouped_mm", "hf_batched_mm": "batched_mm"}


def use_experts_implementation(model: PreTrainedModel, baseline: str) -> str | None:
    """Switch a MoE model to the baseline's experts implementation; None for a model without experts."""
    if not any(type(m).__name__.endswith("Experts") for m in model.modules()):
        return None
    model.set_experts_implementation(HF_EXPERTS[baseline])
    return HF_EXPERTS[baseline]
HF_ATTENTION = "sdpa"            # HF's default attention kernel, what a user of generate gets


def hf_attention(model_dir: Path, attn_implementation: str = HF_ATTENTION) -> str:
    """The attention HF runs for the checkpoint: the architecture's forced one (the registry's; e.g. eager for the
    sliding-window Granites, which HF does not run on SDPA), else `attn_implementation`."""
    return checkpoint_architecture(model_dir).hf_attn_implementation or attn_implementation


def load_hf_model(model_dir: Path, dtype: str = "float32", device: str = "cpu",
                  attn_implementation: str = HF_ATTENTION) -> PreTrainedModel:
    """HF's model for the checkpoint on the same files as the implementation, in the implementation's dtype."""
    model = hf_model_class(model_dir).from_pretrained(model_dir, dtype=DTYPES[dtype],
                                                      attn_implementation=hf_attention(model_dir, attn_implementation))
    return model.to(device).eval()


class _TokenClock(LogitsProcessor):
    """Records the clock when each new token's logits reach the sampler; changes nothing."""

    def __init__(self, sync):
        self.sync = sync
        self.stamps: list[int] = []
        self.cpu_stamps: list[int] = []      # process CPU time at the same moments

    def __call__(self, input_ids, scores):
        self.stamps.append(now_ns(self.sync))
        self.cpu_stamps.append(time.process_time_ns())
        return scores


@torch.no_grad()
def time_hf_generation(model: PreTrainedModel, prompts: list[list[int]], new_tokens: int, cache: str | None,
                       sync, pad_token_id: int = 0) -> GenerationTiming:
    """Greedy generate of exactly `new_tokens` per row (prompts of one length, so no padding)."""
    if len({len(p) for p in prompts}) != 1:
        raise ValueError("the HF baseline takes prompts of one length (no padding)")
    device = model.device
    ids = torch.tensor(prompts, device=device)
    clock = _TokenClock(sync)
    extra = {"cache_implementation": cache} if cache else {}
    start = now_ns(sync)
    start_cpu = time.process_time_ns()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=pad_token_id,
                         logits_processor=LogitsProcessorList([clock]), **extra)
    end = now_ns(sync)
    stamps = clock.stamps
    if len(stamps) != new_tokens:
        raise RuntimeError(f"HF generate produced {len(stamps)} logits for {new_tokens} tokens")
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    tokens = out[:, ids.shape[1]:].tolist()
    cpu = clock.cpu_stamps
    return GenerationTiming(stamps[0] - start, steps, end - start, tokens, cpu[0] - start_cpu,
                            [b - a for a, b in zip(cpu, cpu[1:])])
