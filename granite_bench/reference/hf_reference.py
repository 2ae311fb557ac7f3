"""The golden: HF Transformers' own model class for the checkpoint's architecture (GraniteForCausalLM,
GraniteMoeForCausalLM, ...), fp32, CPU, on the same checkpoint files as the implementation."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from ..model.registry import architecture, hf_generate_can_cache
from .hf_classes import checkpoint_architecture, hf_model_class


class MemoryBudgetError(ValueError):
    """A --max-memory the reference cannot run under (one line, says what to give)."""


LONG_CONTEXT_TOKENS = 2048  # above this many tokens the reference uses SDPA, never an [L, L] score matrix per head
EAGER_CHUNK_TOKENS = 1024   # where eager is forced (no SDPA), a longer sequence is fed in chunks of this many tokens


def attention_for_length(tokens: int, forced: str | None = None) -> str:
    """HF attention implementation of the reference for sequences of `tokens`: the architecture's `forced` one when
    the registry names it (the sliding-window Granites support eager only), else eager (the plain softmax(QK^T)V
    formula) for short ones, SDPA for long ones, where eager's fp32 [heads, L, L] scores would take GBs."""
    if forced:
        return forced
    return "sdpa" if tokens > LONG_CONTEXT_TOKENS else "eager"


def parse_memory(text: str) -> int:
    """'8GiB', '8GB', '512MiB', '1000000' -> bytes."""
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "KB": 10**3, "MB": 10**6, "GB": 10**9,
             "TB": 10**12, "B": 1}
    upper = str(text).strip().upper()
    try:
        for unit, factor in units.items():
            if upper.endswith(unit):
                value = float(upper[:-len(unit)]) * factor
                break
        else:
            value = float(upper)
    except ValueError:
        raise MemoryBudgetError(f"--max-memory {text!r} is not a size: give e.g. 8GiB or 512MiB") from None
    if not value > 0:
        raise MemoryBudgetError(f"--max-memory {text!r} must be positive: give e.g. 8GiB")
    return int(value)


def human_size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f}GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.2f}MiB"


def offload_device_map(model_dir: Path, max_memory: int, dtype: torch.dtype = torch.float32) -> dict:
    """An accelerate device map for GraniteForCausalLM in `dtype` under `max_memory` bytes of weights: embedding, final
    norm and LM head stay in memory, then as many decoder layers as fit; the rest run from disk ('disk': accelerate
    streams each such layer's weights from the checkpoint's own safetensors files just before the layer runs and
    drops them after)."""
    from accelerate import init_empty_weights
    model_class = hf_model_class(model_dir)
    config = model_class.config_class.from_pretrained(model_dir)
    with init_empty_weights():
        empty = model_class(config)
    size = torch.finfo(dtype).bits // 8
    layer_bytes = sum(p.numel() for p in empty.model.layers[0].parameters()) * size
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()  # the LM head is the embedding
    resident_bytes = sum(p.numel() for n, p in empty.named_parameters() if ".layers." not in n and n not in tied) * size
    needed = resident_bytes + layer_bytes
    if max_memory < needed:
        raise MemoryBudgetError(
            f"--max-memory {human_size(max_memory)} cannot hold the reference's embedding/head "
            f"({human_size(resident_bytes)} in {str(dtype).removeprefix('torch.')}) plus one decoder layer ({human_size(layer_bytes)}): "
            f"give at least {human_size(needed)}")
    in_memory = min(config.num_hidden_layers, int((max_memory - resident_bytes) // layer_bytes))
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    if hasattr(empty.model, "rotary_embs"):   # per-layer RoPE bases (sliding-window Granites): one table per base
        device_map["model.rotary_embs"] = "cpu"
    device_map.update({f"model.layers.{i}": "cpu" if i < in_memory else "disk"
                       for i in range(config.num_hidden_layers)})
    return device_map


def load_reference(model_dir: Path, attn_implementation: str = "eager", max_memory: str | int | None = None,
                   offload_dir: Path | None = None, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """HF's own model class for the checkpoint (the registry names it) on the CPU, in fp32 (the golden) or `dtype` (the framework's own error in a lower
    dtype, see framework_error.py). With `max_memory`, accelerate keeps only what fits in memory
    and streams the other decoder layers from the checkpoint files layer by layer (see offload_device_map)."""
    model_class = hf_model_class(model_dir)
    attn_implementation = checkpoint_architecture(model_dir).hf_attn_implementation or attn_implementation
    if max_memory is None:
        model = model_class.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn_implementation)
        return model.eval()
    budget = parse_memory(max_memory) if isinstance(max_memory, str) else int(max_memory)
    device_map = offload_device_map(Path(model_dir), budget, dtype)
    import tempfile
    offload = Path(offload_dir) if offload_dir is not None else Path(tempfile.mkdtemp(prefix="granite-bench-offload-"))
    model = model_class.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn_implementation,
                                        device_map=device_map, offload_folder=str(offload))
    return model.eval()


def reference_chunk(model: PreTrainedModel, length: int) -> int | None:
    """How many tokens the reference feeds at once for a sequence of `length`: all of them (None), unless its
    attention is eager (forced by the architecture) and the sequence is long, where eager's fp32 [heads, L, L] scores
    would not fit: then chunks through HF's own cache, each attending to everything before it."""
    eager = getattr(model.config, "_attn_implementation", None) == "eager"
    return EAGER_CHUNK_TOKENS if eager and length > LONG_CONTEXT_TOKENS else None


@torch.no_grad()
def greedy_tokens(model: PreTrainedModel, prompt: list[int], num_tokens: int) -> list[int]:
    """N greedy tokens for one prompt (no early stop, HF's default cache: none for a hybrid cut to Mamba layers
    only, which transformers' cache cannot serve; a long prompt of an eager-only reference prefilled in chunks by HF's
    own `prefill_chunk_size`)."""
    ids = torch.tensor([prompt])
    config = model.config.to_dict()
    use_cache = hf_generate_can_cache(architecture(config.get("model_type")), config)
    chunk = reference_chunk(model, len(prompt)) if use_cache else None
    extra = {"prefill_chunk_size": chunk} if chunk else {}
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=num_tokens,
                         min_new_tokens=num_tokens, do_sample=False, eos_token_id=None, pad_token_id=0,
                         use_cache=use_cache, **extra)
    return out[0, len(prompt):].tolist()


@torch.no_grad()
def reference_logits(model: PreTrainedModel, tokens: list[int]) -> torch.Tensor:
    """Logits [L, V] of every position: one forward, or chunks through HF's cache (see reference_chunk)."""
    ids = torch.tensor([tokens])
    chunk = reference_chunk(model, len(tokens))
    if chunk is None:
        return model(ids, use_cache=False).logits[0]   # one full forward: no cache
    from transformers import DynamicCache
    cache = DynamicCache(config=model.config)
    parts = []
    for start in range(0, len(tokens), chunk):
        stop = min(start + chunk, len(tokens))
        out = model(ids[:, start:stop], cache=cache, use_cache=True,
                    position_ids=torch.arange(start, stop)[None])
        parts.append(out.logits[0])
    return torch.cat(parts)


@torch.no_grad()
def forward_with_hidden_states(model: PreTrainedModel, tokens: list[int]):
    """Logits [L, V] of every position, plus what localisation compares at each of the architecture's sub-blocks
    (the registry's `sub_blocks`: residual streams after attention and after the MLP, a MoE router's routing, the
    experts' and shared MLP's outputs), as [(layer, sub-block, Tensor[L, X])] in execution order."""
    captured = []
    hooks = []
    sub_blocks = architecture(model.config.model_type).sub_blocks
    for idx, layer in enumerate(model.model.layers):
        for sub in sub_blocks:
            try:
                module = layer.get_submodule(sub.hf_module) if sub.hf_module else layer
                if sub.requires:
                    layer.get_submodule(sub.requires)
            except AttributeError:
                continue   # this layer has no such block (a shared MLP of size 0, a layer of another kind)
            hooks.append(capture_hook(module, idx, sub, captured))
    try:
        logits = reference_logits(model, tokens)
    finally:
        for hook in hooks:
            hook.remove()
    chunked = reference_chunk(model, len(tokens)) is not None
    return logits.float(), join_chunks(captured) if chunked else captured


def join_chunks(captured: list) -> list:
    """[(layer, sub-block, Tensor[c, X])] of one forward per chunk -> one entry per (layer, sub-block) over all the
    positions, in execution order (unchanged for a single forward)."""
    joined: dict[tuple, list] = {}
    for layer, name, tensor in captured:
        joined.setdefault((layer, name), []).append(tensor)
    return [(layer, name, parts[0] if len(parts) == 1 else torch.cat(parts)) for (layer, name), parts in joined.items()]


def capture_hook(module: torch.nn.Module, layer: int, sub, captured: list):
    """Register the hook that appends (layer, sub.name, Tensor[L, X]) when `module` runs (batch of one)."""
    def tokens_first(tensor: torch.Tensor) -> torch.Tensor:   # [1, L, X] or flattened [L, X] -> [L, X]
        return (tensor[0] if tensor.dim() == 3 else tensor).detach().clone()

    if sub.capture == "input":
        return module.register_forward_pre_hook(
            lambda _m, args: captured.append((layer, sub.name, tokens_first(args[0]))))
    if sub.capture == "routing":
        def routing(_m, _args, output):   # (router logits, top-k weights, top-k index) -> [L, E] routing weights
            logits, weights, index = output
            dense = torch.zeros(logits.shape, dtype=torch.float32).scatter(-1, index, weights.float())
            captured.append((layer, sub.name, tokens_first(dense)))
        return module.register_forward_hook(routing)
    if sub.capture == "router_logits":
        return module.register_forward_hook(
            lambda _m, _args, output: captured.append((layer, sub.name, tokens_first(output[0].float()))))
    return module.register_forward_hook(
        lambda _m, _args, output: captured.append(
            (layer, sub.name, tokens_first(output[0] if isinstance(output, tuple) else output))))
