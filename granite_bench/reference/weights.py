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
from transformers import PretrainedConfig

from ..model.registry import architecture

from .hf_classes import hf_config_class
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


# Attention sinks (sliding-window Granites; HF initialises them to zero): drawn around the log-sum-exp of a
# window's scores (log 16 + 1/2 for W 16, unit-spread scores), so some heads' sinks take most of the attention and
# some almost none.
SINK_MEAN, SINK_STD = 3.0, 1.5


def cache_root() -> Path:
    return Path(os.environ.get("GRANITE_BENCH_CACHE", Path.home() / ".cache" / "granite-bench"))


def preset_config(preset: Preset, num_layers: int | None = None) -> PretrainedConfig:
    """The preset's shape as its architecture's HF config (GraniteConfig, GraniteMoeConfig, ...)."""
    kwargs = dict(preset.config)
    if num_layers is not None:
        kwargs["num_hidden_layers"] = num_layers
        if isinstance(kwargs.get("layer_types"), list):   # a per-layer list is cut with the layers
            kwargs["layer_types"] = kwargs["layer_types"][:num_layers]
    try:
        return hf_config_class(preset.model_type)(**kwargs)
    except (TypeError, ValueError) as err:
        raise PresetError(f"preset '{preset.name}' has a bad config: {err}") from None


def is_checkpoint_dir(path: Path) -> bool:
    return (path / "config.json").exists()


def resolve_model_dir(model: str, num_layers: int | None = None, dtype: str | None = None) -> Path:
    """A checkpoint directory for `model`: the directory itself, a committed preset folder, or cached random weights
    (stored in `dtype`, else the preset's `checkpoint_dtype`, else float32)."""
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
    dtype = dtype or preset.checkpoint_dtype or "float32"
    from ..fingerprint import code_fingerprint  # the code and versions that create the weights are in the key
    code = code_fingerprint("reference/weights.py", versions_of=("torch", "transformers"))
    key = json.dumps({"config": config.to_dict(), "init": init, "dtype": dtype, "code": code}, sort_keys=True,
                     default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    layers = f"-l{num_layers}" if num_layers is not None else ""
    target = cache_root() / "models" / f"{preset.name}{layers}-{dtype}-{digest}"
    if not is_checkpoint_dir(target):
        create_random_checkpoint(config, init, target, dtype, preset.max_shard_size)
    return target


def init_constants(config: PretrainedConfig, init: dict) -> dict:
    """q/k gain and final norm gain of the seeded init, derived from the config (recorded beside the weights)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    # q·k over head_dim terms of (q_gain·k_gain) unit-variance products, times attention_multiplier.
    qk_gain = math.sqrt(init["attention_score_std"] / (config.attention_multiplier * math.sqrt(head_dim)))
    final_norm_gain = init["target_logit_std"] * config.logits_scaling / (
        init["embedding_std"] * math.sqrt(config.hidden_size))
    return {"qk_gain": qk_gain, "final_norm_gain": final_norm_gain}


def seeded_parameters(config: PretrainedConfig, init: dict):
    """(name, fp32 tensor) of every parameter of HF's model for `config`, one at a time in module order, drawn
    from one seeded generator: whose logits and attention have a realistic spread (HF's default init gives
    near-uniform logits). A tied lm_head is not yielded (it is the embedding). Names are the checkpoint's: where
    transformers holds a tensor under another name in memory (fused MoE experts), the name its checkpoints use."""
    arch = architecture(config.model_type)
    import transformers
    with torch.device("meta"):
        model = getattr(transformers, arch.hf_class)(config)
        shapes = [(checkpoint_name(name, arch.checkpoint_names), tuple(p.shape)) for name, p in model.named_parameters()]
    gains = init_constants(config, init)
    gen = torch.Generator().manual_seed(int(init["seed"]))
    for name, shape in shapes:
        if ".mamba." in name and name.rsplit(".", 1)[1] in MAMBA_PER_HEAD:
            yield name, mamba_per_head(name, shape, init, gen)
        elif name.endswith("norm.weight"):
            centre = gains["final_norm_gain"] if name == "model.norm.weight" else 1.0
            jitter = init["norm_jitter"]
            yield name, centre * (1 + jitter * (2 * torch.rand(shape, generator=gen) - 1))
        elif "embed_tokens" in name or name == "lm_head.weight":
            yield name, torch.randn(shape, generator=gen, dtype=torch.float32) * init["embedding_std"]
        elif name.endswith(".bias"):
            yield name, torch.zeros(shape)
        elif name.endswith(".self_attn.sinks"):
            yield name, SINK_MEAN + SINK_STD * torch.randn(shape, generator=gen, dtype=torch.float32)
        else:
            gain = gains["qk_gain"] if (".q_proj." in name or ".k_proj." in name) else init["linear_gain"]
            # std gain / sqrt(fan_in): the last dimension of [out, in] and of fused experts [E, out, in]
            yield name, torch.randn(shape, generator=gen, dtype=torch.float32) * (gain / math.sqrt(shape[-1]))


MAMBA_PER_HEAD = ("A_log", "D", "dt_bias")


def mamba_per_head(name: str, shape: tuple, init: dict, gen: torch.Generator) -> torch.Tensor:
    """A Mamba2 layer's per-head parameters, as HF initialises them but varied per head (so a head placed on the
    wrong rank, or a dropped term, shows): A_log = log(1..heads) (A = -1, -2, ...), D in 1 ± norm_jitter, dt_bias
    uniform in [-2, 1] (softplus: time steps ~0.13-1.3)."""
    kind = name.rsplit(".", 1)[1]
    if kind == "A_log":
        return torch.log(torch.arange(1, shape[0] + 1, dtype=torch.float32))
    if kind == "D":
        return 1 + init["norm_jitter"] * (2 * torch.rand(shape, generator=gen) - 1)
    return 3 * torch.rand(shape, generator=gen) - 2


def checkpoint_name(name: str, renames: tuple[tuple[str, str], ...]) -> str:
    """transformers' in-memory parameter name -> the name its checkpoints store the tensor under."""
    for in_memory, stored in renames:
        if name.endswith(in_memory):
            return name[:-len(in_memory)] + stored
    return name


def parse_size(text: str | int) -> int:
    """'5GB' / '512MiB' / 1000 -> bytes (HF's max_shard_size spelling)."""
    if isinstance(text, int):
        return text
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    upper = str(text).strip().upper()
    for unit, factor in units.items():
        if upper.endswith(unit):
            return int(float(upper[:-len(unit)]) * factor)
    return int(upper)


def write_sharded_safetensors(tensors, directory: Path, max_shard_size: int) -> None:
    """Stream (name, tensor) pairs into model-0000k-of-0000n.safetensors shards of at most max_shard_size bytes plus
    model.safetensors.index.json, HF's sharded layout; a single shard is written as model.safetensors. Holds one
    shard in memory at a time."""
    from safetensors.torch import save_file
    shards, current, size, total = [], {}, 0, 0
    weight_map = {}

    def flush():
        nonlocal current, size
        name = f"part-{len(shards):05d}.safetensors"
        save_file(current, str(directory / name), metadata={"format": "pt"})
        shards.append((name, list(current)))
        current, size = {}, 0

    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_size:
            flush()
        current[name] = tensor.contiguous()
        size += nbytes
        total += nbytes
    if current:
        flush()
    if len(shards) == 1:
        os.replace(directory / shards[0][0], directory / "model.safetensors")
        return
    for i, (part, names) in enumerate(shards):
        final = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        os.replace(directory / part, directory / final)
        weight_map.update({n: final for n in names})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def create_random_checkpoint(config: PretrainedConfig, init: dict, target: Path, dtype: str,
                             max_shard_size: str | int = "5GB") -> Path:
    """Random seeded weights in `dtype`, written like a real Granite checkpoint (config.json + safetensors, sharded
    with an index above max_shard_size), atomically (temp folder, then rename). Tensors are drawn and written one
    shard at a time, so a full-depth granite-3.1-8b (16 GB in bf16) never sits in memory whole, nor in fp32."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        saved = type(config)(**{**config.to_dict()})
        saved.dtype = torch_dtype
        saved.architectures = [architecture(config.model_type).hf_class]
        saved.save_pretrained(tmp)
        tensors = ((name, tensor.to(torch_dtype)) for name, tensor in seeded_parameters(config, init))
        write_sharded_safetensors(tensors, tmp, parse_size(max_shard_size))
        (tmp / INIT_FILE).write_text(json.dumps({**init, **init_constants(config, init), "dtype": dtype},
                                                indent=2, sort_keys=True))
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


def load_hf_config(model_dir: Path) -> PretrainedConfig:
    """The checkpoint's config, through transformers (reads transformers 4.x rope_theta/rope_scaling and 5.x
    rope_parameters alike)."""
    from ..preflight import BadInput, config_json  # the CLI's own check, before torch loads: one reader for both
    try:
        data = config_json(Path(model_dir))
    except BadInput as err:
        raise PresetError(str(err)) from None
    try:
        return hf_config_class(data["model_type"]).from_pretrained(model_dir)
    except (TypeError, ValueError, KeyError) as err:
        raise PresetError(f"{Path(model_dir) / 'config.json'} is malformed: {err}") from None
