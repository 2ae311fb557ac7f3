"""One weights path for presets and real checkpoints.

A preset gets random weights from a fixed seed, written with `save_pretrained` into a cache folder, and from then on
is loaded exactly like a downloaded `ibm-granite/*` directory. The init is scaled so the logits have a realistic
spread (HF's default init gives near-uniform logits, where parity passes trivially); its parameters are saved in
`granite_bench_init.json` beside the weights and go into the results.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import GraniteConfig, GraniteForCausalLM

from .presets import Preset, PresetError, load_preset

INIT_FILE = "granite_bench_init.json"
DEFAULT_INIT = {
    "seed": 0,
    "embedding_std": 0.02,          # HF's own initializer_range
    "linear_gain": 2.0,             # std = gain / sqrt(fan_in) for v, o and MLP projections: layers, not the
                                    # token's own (tied) embedding, decide the next token
    "attention_score_std": 1.0,     # q/k scaled so q·k·attention_multiplier has this spread
    "target_logit_std": 3.5,        # final norm gain chosen so the logits have this spread
    "norm_jitter": 0.2,             # layer norm weights uniform in 1 ± jitter
}


def cache_root() -> Path:
    return Path(os.environ.get("GRANITE_BENCH_CACHE", Path.home() / ".cache" / "granite-bench"))


def preset_config(preset: Preset, num_layers: int | None = None) -> GraniteConfig:
    kwargs = dict(preset.config)
    if num_layers is not None:
        kwargs["num_hidden_layers"] = num_layers
    try:
        return GraniteConfig(**kwargs)
    except (TypeError, ValueError) as err:
        raise PresetError(f"preset '{preset.name}' has a bad config: {err}") from None


def is_checkpoint_dir(path: Path) -> bool:
    return (path / "config.json").exists()


def resolve_model_dir(model: str, num_layers: int | None = None, dtype: str = "float32") -> Path:
    """A checkpoint directory for `model`: the directory itself, a committed preset folder, or cached random weights."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not is_checkpoint_dir(path):
            raise PresetError(f"{path} has no config.json: point --model at a Granite checkpoint directory")
        return path
    preset = load_preset(model)
    if preset.checkpoint is not None:
        if not is_checkpoint_dir(preset.checkpoint):
            raise PresetError(f"preset '{model}' points at {preset.checkpoint}, which has no config.json")
        return preset.checkpoint
    init = {**DEFAULT_INIT, **preset.init}
    config = preset_config(preset, num_layers)
    from ..fingerprint import code_fingerprint  # the code and versions that create the weights are in the key
    code = code_fingerprint("reference/weights.py", versions_of=("torch", "transformers"))
    key = json.dumps({"config": config.to_dict(), "init": init, "dtype": dtype, "code": code}, sort_keys=True,
                     default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    layers = f"-l{num_layers}" if num_layers is not None else ""
    target = cache_root() / "models" / f"{preset.name}{layers}-{dtype}-{digest}"
    if not is_checkpoint_dir(target):
        create_random_checkpoint(config, init, target, dtype)
    return target


@torch.no_grad()
def scaled_init_(model: GraniteForCausalLM, init: dict) -> dict:
    """Overwrite HF's init with a seeded one whose logits and attention have a realistic spread; returns the
    derived constants (so they can be recorded)."""
    config = model.config
    gen = torch.Generator().manual_seed(int(init["seed"]))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    # q·k over head_dim terms of (q_gain·k_gain) unit-variance products, times attention_multiplier.
    qk_gain = math.sqrt(init["attention_score_std"] / (config.attention_multiplier * math.sqrt(head_dim)))
    final_norm_gain = init["target_logit_std"] * config.logits_scaling / (
        init["embedding_std"] * math.sqrt(config.hidden_size))

    def normal_(tensor, std):
        tensor.copy_(torch.randn(tensor.shape, generator=gen, dtype=torch.float32) * std)

    def around_(tensor, centre):
        jitter = init["norm_jitter"]
        tensor.copy_(centre * (1 + jitter * (2 * torch.rand(tensor.shape, generator=gen) - 1)))

    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            around_(param, final_norm_gain if name == "model.norm.weight" else 1.0)
        elif "embed_tokens" in name or name == "lm_head.weight":
            normal_(param, init["embedding_std"])
        elif name.endswith(".bias"):
            param.zero_()
        else:
            gain = qk_gain if (".q_proj." in name or ".k_proj." in name) else init["linear_gain"]
            normal_(param, gain / math.sqrt(param.shape[1]))
    if config.tie_word_embeddings:
        model.tie_weights()
    return {"qk_gain": qk_gain, "final_norm_gain": final_norm_gain}


def create_random_checkpoint(config: GraniteConfig, init: dict, target: Path, dtype: str) -> Path:
    """Random seeded weights saved with save_pretrained, atomically (temp folder, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        # Build on the meta device in the target dtype, then allocate: a real-shape preset never passes through
        # an fp32 copy (granite-3.1-8b in fp32 would not fit in this machine's memory) nor HF's slow init.
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch_dtype)
        try:
            with torch.device("meta"):
                model = GraniteForCausalLM(config)
        finally:
            torch.set_default_dtype(default_dtype)
        model = model.to_empty(device="cpu")
        model.tie_weights()
        derived = scaled_init_(model, init)
        model.save_pretrained(tmp)
        (tmp / INIT_FILE).write_text(json.dumps({**init, **derived, "dtype": dtype}, indent=2, sort_keys=True))
        try:
            os.replace(tmp, target)
        except OSError:  # another process created it first
            if not is_checkpoint_dir(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_init(model_dir: Path) -> dict:
    """The recorded init of a preset's random weights; {} for a real checkpoint."""
    path = Path(model_dir) / INIT_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def load_hf_config(model_dir: Path) -> GraniteConfig:
    """The checkpoint's config, through transformers (reads transformers 4.x rope_theta/rope_scaling and 5.x
    rope_parameters alike)."""
    path = Path(model_dir) / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PresetError(f"{path} is missing: point --model at a Granite checkpoint directory") from None
    except json.JSONDecodeError as err:
        raise PresetError(f"{path} is not valid JSON ({err.msg}, line {err.lineno}): fix or re-download it") from None
    if not isinstance(data, dict):
        raise PresetError(f"{path} must hold a JSON object: fix or re-download it")
    if data.get("model_type") != "granite":
        raise PresetError(f"{path} has model_type {data.get('model_type')!r}; granite-bench needs 'granite'")
    try:
        return GraniteConfig.from_pretrained(model_dir)
    except (TypeError, ValueError, KeyError) as err:
        raise PresetError(f"{path} is malformed: {err}") from None
