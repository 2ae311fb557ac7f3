"""Reading HF checkpoints and writing per-rank shards: the pieces every architecture's state-dict converter uses.

QKV fusion (per rank: [q_r; k_r; v_r] so column sharding keeps each rank's own heads), GQA head placement from
`head_sharding`, tied embeddings (lm_head = embed_tokens when the checkpoint has no lm_head), vocabulary padding of
the LM head to a multiple of tp, and the dtype cast.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .head_sharding import HeadPlan
from .parallel_layers import pad_to_multiple


class CheckpointError(ValueError):
    """A checkpoint directory whose safetensors files are missing or unreadable (one line, says what to do)."""


class SafetensorsCheckpoint(Mapping):
    """The tensors of a (possibly sharded) safetensors checkpoint directory, read one at a time on access.

    Nothing is loaded up front: conversion reads a tensor, converts it and drops it, so loading a checkpoint never
    holds the whole HF state dict beside the converted one (a full-depth granite-3.1-8b is 16 GB in bf16).
    Opening checks that every file the index names exists and has a readable safetensors header."""

    def __init__(self, model_dir: Path):
        self.model_dir = Path(model_dir)
        index = self.model_dir / "model.safetensors.index.json"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CheckpointError(f"{index} is not a safetensors index (no weight_map): re-download or "
                                      f"re-create the checkpoint") from None
        else:
            weight_map = None
        files = sorted(set(weight_map.values())) if weight_map else ["model.safetensors"]
        self.file_of: dict[str, Path] = {}
        for name in files:
            path = self.model_dir / name
            if not path.exists():
                named_by = index.name if weight_map else "the checkpoint"
                raise CheckpointError(f"checkpoint file {path} is missing (named by {named_by}): re-download or "
                                      f"re-create the checkpoint")
            try:
                with safe_open(str(path), framework="pt") as handle:
                    keys = list(handle.keys())
            except Exception as err:  # safetensors raises its own error types for a bad header
                raise CheckpointError(f"checkpoint file {path} is not readable safetensors ({err}): re-download "
                                      f"or re-create the checkpoint") from None
            self.file_of.update({key: path for key in keys})

    def __getitem__(self, key: str) -> torch.Tensor:
        path = self.file_of[key]
        with safe_open(str(path), framework="pt") as handle:
            return handle.get_tensor(key)

    def __iter__(self):
        return iter(self.file_of)

    def __len__(self) -> int:
        return len(self.file_of)


def load_hf_state_dict(model_dir: Path) -> SafetensorsCheckpoint:
    """All tensors of a (possibly sharded) safetensors checkpoint directory, read lazily (see SafetensorsCheckpoint)."""
    return SafetensorsCheckpoint(model_dir)


def select_heads(weight: torch.Tensor, heads: list[int | None], head_dim: int, dim: int) -> torch.Tensor:
    """Pick head blocks (of size head_dim along `dim`) in order; None gives a zero block."""
    blocks = []
    for h in heads:
        if h is None:
            shape = list(weight.shape)
            shape[dim] = head_dim
            blocks.append(torch.zeros(shape, dtype=weight.dtype))
        else:
            blocks.append(weight.narrow(dim, h * head_dim, head_dim))
    return torch.cat(blocks, dim=dim)


def shard(weight: torch.Tensor, rank: int, tp: int, dim: int) -> torch.Tensor:
    return weight.chunk(tp, dim=dim)[rank].clone()


def convert_attention(hf: dict, prefix: str, plan: HeadPlan, rank: int, fused_qkv: bool) -> dict:
    d = plan.head_dim
    q_heads, kv_heads = plan.q_heads[rank], plan.kv_heads[rank]
    out = {}
    for kind in ("weight", "bias"):
        q_key = f"{prefix}.q_proj.{kind}"
        if q_key not in hf:
            continue
        q = select_heads(hf[q_key], q_heads, d, 0)
        k = select_heads(hf[f"{prefix}.k_proj.{kind}"], kv_heads, d, 0)
        v = select_heads(hf[f"{prefix}.v_proj.{kind}"], kv_heads, d, 0)
        if fused_qkv:
            out[f"qkv_proj.{kind}"] = torch.cat([q, k, v], dim=0)
        else:
            out.update({f"q_proj.{kind}": q, f"k_proj.{kind}": k, f"v_proj.{kind}": v})
    out["o_proj.weight"] = select_heads(hf[f"{prefix}.o_proj.weight"], q_heads, d, 1)
    if f"{prefix}.o_proj.bias" in hf:  # the row-parallel bias is added once, after the all-reduce
        out["o_proj.bias"] = hf[f"{prefix}.o_proj.bias"]
    return out


def convert_attention_and_norms(hf: Mapping[str, torch.Tensor], src: str, plan: HeadPlan, rank: int,
                                fused_qkv: bool, attention: Callable | None = None) -> dict[str, torch.Tensor]:
    """A Granite decoder layer's attention (`self_attn.*`, this rank's heads; `attention` converts it, default
    `convert_attention`) and its two RMSNorm weights."""
    attention = attention or convert_attention
    out = {f"self_attn.{k}": v for k, v in attention(hf, f"{src}.self_attn", plan, rank, fused_qkv).items()}
    for norm in ("input_layernorm", "post_attention_layernorm"):
        out[f"{norm}.weight"] = hf[f"{src}.{norm}.weight"]
    return out


def convert_model(hf: Mapping[str, torch.Tensor], config, rank: int, tp: int, dtype: torch.dtype,
                  convert_layer: Callable[[str], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The state dict of rank `rank` of `tp`: embedding (sharded across the embedding dimension), LM head (tied to
    the embedding when the checkpoint has none; vocabulary padded to a multiple of tp), final norm, then
    `convert_layer("model.layers.{i}")` -> {name inside layers.{i}: tensor} for every decoder layer.

    Layer by layer: each HF tensor is read (lazily, from a SafetensorsCheckpoint), converted, cast to `dtype` and
    dropped, so the peak is this rank's converted weights plus one layer of the checkpoint."""
    out = {}

    def put(key: str, value: torch.Tensor) -> None:
        out[key] = value.to(dtype).contiguous()

    embed = hf["model.embed_tokens.weight"]
    put("embed_tokens.weight", shard(embed, rank, tp, dim=1))
    lm_head = hf.get("lm_head.weight")
    if lm_head is None:
        if not getattr(config, "tie_word_embeddings", False):
            raise KeyError("checkpoint has no lm_head.weight and tie_word_embeddings is false")
        lm_head = embed
    del embed
    padded_vocab = pad_to_multiple(lm_head.shape[0], tp)
    lm_head = torch.nn.functional.pad(lm_head, (0, 0, 0, padded_vocab - lm_head.shape[0]))
    put("lm_head.weight", shard(lm_head, rank, tp, dim=0))
    del lm_head
    put("norm.weight", hf["model.norm.weight"])
    for i in range(config.num_hidden_layers):
        for key, value in convert_layer(f"model.layers.{i}").items():
            put(f"layers.{i}.{key}", value)
    return out


def convert_gated_mlp(hf: Mapping[str, torch.Tensor], prefix: str, rank: int, tp: int) -> dict[str, torch.Tensor]:
    """HF gate_proj/up_proj/down_proj under `prefix` -> this rank's column (gate, up) and row (down) shards."""
    out = {}
    for name in ("gate_proj", "up_proj"):
        out[f"{name}.weight"] = shard(hf[f"{prefix}.{name}.weight"], rank, tp, dim=0)
        if f"{prefix}.{name}.bias" in hf:
            out[f"{name}.bias"] = shard(hf[f"{prefix}.{name}.bias"], rank, tp, dim=0)
    out["down_proj.weight"] = shard(hf[f"{prefix}.down_proj.weight"], rank, tp, dim=1)
    if f"{prefix}.down_proj.bias" in hf:  # the row-parallel bias is added once, after the all-reduce
        out["down_proj.bias"] = hf[f"{prefix}.down_proj.bias"]
    return out


def convert_fused_gated_mlp(hf: Mapping[str, torch.Tensor], prefix: str, rank: int, tp: int) -> dict[str, torch.Tensor]:
    """A gated MLP stored fused (`input_linear` [2S, H]: gate rows, then up rows; `output_linear` [H, S], as Granite
    MoE's shared MLP) -> this rank's gate_proj / up_proj / down_proj shards."""
    gate, up = hf[f"{prefix}.input_linear.weight"].chunk(2, dim=0)
    split = {f"{prefix}.gate_proj.weight": gate, f"{prefix}.up_proj.weight": up,
             f"{prefix}.down_proj.weight": hf[f"{prefix}.output_linear.weight"]}
    return convert_gated_mlp(split, prefix, rank, tp)


def first_present(hf: Mapping[str, torch.Tensor], *names: str) -> torch.Tensor:
    """The tensor under the first of `names` the checkpoint has (one tensor, several layouts' names)."""
    for name in names:
        if name in hf:
            return hf[name]
    raise KeyError(f"checkpoint has none of {', '.join(names)}")


# -- per-rank sharded checkpoints ------------------------------------------------------------------------------
# Converted once by the driver and cached, so each TP rank reads only its own shard (never the whole checkpoint).
SHARD_FORMAT_VERSION = 1
# Package files whose code decides a shard's contents (their bytes are part of the shard cache key).
def converter_sources() -> tuple[str, ...]:
    """Every file of the model package (backend, registry, each architecture's converter): a shard's key covers them."""
    from ...fingerprint import PACKAGE_DIR
    return tuple(sorted(str(p.relative_to(PACKAGE_DIR)) for p in (PACKAGE_DIR / "model").rglob("*.py")))
SHARD_MANIFEST = "manifest.json"


def shard_file_name(rank: int) -> str:
    return f"rank{rank}.safetensors"


def checkpoint_fingerprint(model_dir: Path) -> list[dict]:
    """Name, size and modification time of every file the conversion reads: a changed checkpoint gets new shards."""
    model_dir = Path(model_dir)
    names = sorted(p.name for p in model_dir.iterdir() if p.suffix in (".safetensors", ".json"))
    return [{"name": n, "size": (model_dir / n).stat().st_size, "mtime_ns": (model_dir / n).stat().st_mtime_ns}
            for n in names]


def shard_key(model_dir: Path, tp: int, dtype: torch.dtype, fused_qkv: bool, ep: int = 1) -> dict:
    """Everything a set of rank shards depends on (hashed into its cache folder name)."""
    from ...fingerprint import code_fingerprint
    return {"format": SHARD_FORMAT_VERSION, "model_dir": str(Path(model_dir).resolve()),
            "files": checkpoint_fingerprint(model_dir), "tp": tp, "dtype": str(dtype).replace("torch.", ""),
            "fused_qkv": fused_qkv, "moe_ep_degree": ep,
            # the converter and the head plan that wrote the shards: a change to either gives new shards
            "code": code_fingerprint(*converter_sources(), versions_of=("torch", "safetensors"))}


def save_sharded_checkpoint(convert: Callable[[int], dict[str, torch.Tensor]], plan: HeadPlan, tp: int,
                            directory: Path, manifest: dict | None = None) -> list[Path]:
    """Write rank{r}.safetensors = convert(r) for r in [0, tp) plus a manifest, atomically (temp folder, then
    rename)."""
    import os
    import shutil
    import tempfile

    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        for rank in range(tp):
            state = convert(rank)
            save_file(state, str(tmp / shard_file_name(rank)), metadata={"rank": str(rank), "tp": str(tp)})
        info = {**(manifest or {}), "tp": tp, "strategy": plan.strategy, "q_heads": plan.q_heads,
                "kv_heads": plan.kv_heads, "files": [shard_file_name(r) for r in range(tp)]}
        (tmp / SHARD_MANIFEST).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        try:
            os.replace(tmp, directory)
        except OSError:  # another process wrote the same shards first
            if not (directory / SHARD_MANIFEST).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [directory / shard_file_name(r) for r in range(tp)]


def has_sharded_checkpoint(directory: Path, tp: int) -> bool:
    directory = Path(directory)
    return (directory / SHARD_MANIFEST).exists() and all(
        (directory / shard_file_name(r)).exists() for r in range(tp))


def load_rank_shard(directory: Path, rank: int) -> dict[str, torch.Tensor]:
    """One rank's converted state dict (as saved by `save_sharded_checkpoint`)."""
    path = Path(directory) / shard_file_name(rank)
    if not path.exists():
        raise FileNotFoundError(f"sharded checkpoint {path} is missing: delete {Path(directory)} to re-create it")
    return load_file(str(path))
