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
    framework_dtype: str | None = None   # also measure HF's own model in this dtype on the goldens
    force: bool = False                  # recompute goldens that are already there and match


def run_reference_command(args: ReferenceArgs, console) -> Path:
    """Goldens of (model, prompts, num tokens) written to args.out, or to the golden cache parity looks in."""
    from ..parity.prompts import PromptError, encode_prompts, read_prompts_file
    from .golden_files import check_goldens_target
    from .goldens import cache_dir_for, cached_goldens, golden_request, run_reference
    from .hf_reference import offload_device_map, parse_memory
    from .weights import load_hf_config, resolve_model_dir
    raw = read_prompts_file(args.prompts) if args.prompts else args.suite_prompts
    if not raw:
        raise PromptError("no prompts: pass --prompts FILE or give 'prompts' in the suite")
    if args.num_tokens < 1:
        raise PromptError(f"--num-tokens {args.num_tokens}: the reference needs at least one greedy token")
    if args.out is not None:   # a file, a folder of other things, or the working folder: refused, never deleted
        check_goldens_target(Path(args.out))
    model_dir = resolve_model_dir(args.model, num_layers=args.layers)
    hf_config = load_hf_config(model_dir)
    prompts = encode_prompts(raw, model_dir, hf_config.vocab_size)
    if args.max_memory is not None:  # refuse a budget that cannot hold one layer before loading anything
        offload_device_map(model_dir, parse_memory(args.max_memory))
    fingerprint, key = golden_request(model_dir, prompts, args.num_tokens)
    target = Path(args.out) if args.out is not None else cache_dir_for(model_dir, fingerprint, prompts,
                                                                         args.num_tokens)
    console.print(f"[bold]reference[/] {args.model} · fp32 · {key['attn_implementation']} attention · "
                  f"{len(prompts)} prompts · {args.num_tokens} tokens"
                  f"{f' · max memory {args.max_memory}' if args.max_memory else ''}")
    start = time.perf_counter()
    if not args.force and cached_goldens(target, key, console.print) is not None:
        console.print(f"goldens: {target} already holds these goldens (kept; --force recomputes them)")
    else:
        run_reference(args.model, model_dir, prompts, args.num_tokens, key, target, args.max_memory)
        console.print(f"goldens: {target} ({len(prompts)} prompts, checkpoint {fingerprint[:12]}, "
                      f"{time.perf_counter() - start:.1f} s)")
    if args.framework_dtype is not None:
        from .framework_error import compute_framework_error, framework_file
        start = time.perf_counter()
        doc = compute_framework_error(model_dir, target, args.framework_dtype, args.max_memory)
        worst = ", ".join(f"{name} {value:.3g}" for name, value in doc["worst"].items())
        console.print(f"HF's own {doc['dtype']} against these goldens: worst {worst} -> "
                      f"{framework_file(target, doc['dtype'])} ({time.perf_counter() - start:.1f} s)")
    return target
