"""Model presets: YAML files in suites/models/ naming a real Granite shape, a tiny test shape, or a committed
checkpoint folder. Data, not code: adding a shape means adding a file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


from ..resources import suites_dir
from ..schemas import ModelPreset, SchemaError, read_yaml

SUITES_DIR = suites_dir()
MODELS_DIR = SUITES_DIR / "models"


class PresetError(ValueError):
    """Unknown or malformed preset."""


@dataclass
class Preset:
    name: str
    description: str = ""
    model_type: str = "granite"                     # the architecture (model/registry.py); its HF config class
    config: dict = field(default_factory=dict)      # keyword arguments of that config class
    init: dict = field(default_factory=dict)        # random-weight init (seed, target spreads)
    checkpoint: Path | None = None                  # committed checkpoint folder instead of random weights
    checkpoint_dtype: str | None = None             # dtype random weights are stored in (real checkpoints: bf16)
    max_shard_size: str = "5GB"                     # safetensors shard size of the random checkpoint


def available_presets() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))


def load_preset(name: str) -> Preset:
    path = MODELS_DIR / f"{name}.yaml"
    if not path.exists():
        raise PresetError(f"unknown model '{name}': use a local checkpoint directory or one of "
                          f"{', '.join(available_presets())}")
    try:
        data = read_yaml(path, ModelPreset, "preset")
    except SchemaError as err:
        raise PresetError(str(err)) from None
    checkpoint = data.get("checkpoint")
    return Preset(
        name=data.get("name", name),
        description=data.get("description", ""),
        model_type=str(data.get("model_type", "granite")),
        config=dict(data.get("config") or {}),
        init=dict(data.get("init") or {}),
        checkpoint=(MODELS_DIR / checkpoint) if checkpoint else None,
        checkpoint_dtype=data.get("checkpoint_dtype"),
        max_shard_size=str(data.get("max_shard_size", "5GB")),
    )
