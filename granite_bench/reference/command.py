"""`granite-bench reference`: run the HF fp32 reference once and store its goldens (see goldens.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ReferenceArgs:
    model: str
    layers: int | None
    prompts: Path | None
    suite_prompts: list | None
    num_tokens: int
    max_memory: str | None
    out: Path | None


def run_reference_command(args: ReferenceArgs, console) -> Path:
    """Goldens of (model, prompts, num tokens) written to args.out, or to the golden cache parity looks in."""
    from ..parity.prompts import PromptError, encode_prompts, read_prompts_file
    from .fingerprint import content_fingerprint
    from .goldens import GoldenError, cache_dir_for, compute_goldens, golden_key, golden_metadata, save_goldens
    from .hf_reference import attention_for_length, load_reference, offload_device_map, parse_memory
    from .weights import load_hf_config, resolve_model_dir
    raw = read_prompts_file(args.prompts) if args.prompts else args.suite_prompts
    if not raw:
        raise PromptError("no prompts: pass --prompts FILE or give 'prompts' in the suite")
    if args.num_tokens < 1:
        raise PromptError(f"--num-tokens {args.num_tokens}: the reference needs at least one greedy token")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise GoldenError(f"--out {args.out} is a file: give a directory for the goldens")
    model_dir = resolve_model_dir(args.model, num_layers=args.layers)
    hf_config = load_hf_config(model_dir)
    prompts = encode_prompts(raw, model_dir, hf_config.vocab_size)
    if args.max_memory is not None:  # refuse a budget that cannot hold one layer before loading anything
        offload_device_map(model_dir, parse_memory(args.max_memory))
    fingerprint = content_fingerprint(model_dir)
    attn = attention_for_length(max(len(p) for p in prompts) + args.num_tokens)
    key = golden_key(fingerprint, prompts, args.num_tokens, attn)
    target = Path(args.out) if args.out is not None else cache_dir_for(model_dir, fingerprint, prompts,
                                                                         args.num_tokens)
    console.print(f"[bold]reference[/] {args.model} · fp32 · {attn} attention · {len(prompts)} prompts · "
                  f"{args.num_tokens} tokens{f' · max memory {args.max_memory}' if args.max_memory else ''}")
    start = time.perf_counter()
    reference = load_reference(model_dir, attn_implementation=attn, max_memory=args.max_memory)
    goldens = compute_goldens(reference, prompts, args.num_tokens)
    del reference
    save_goldens(goldens, key, target, golden_metadata(key, args.model, model_dir))
    console.print(f"goldens: {target} ({len(goldens)} prompts, checkpoint {fingerprint[:12]}, "
                  f"{time.perf_counter() - start:.1f} s)")
    return target
