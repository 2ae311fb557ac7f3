"""Which transformers classes are the reference for a checkpoint: asked of the model registry (plain data), so the
reference never imports the implementation."""

from __future__ import annotations

import json
from pathlib import Path

from ..model.registry import Architecture, architecture


def checkpoint_architecture(model_dir: Path) -> Architecture:
    """The registry entry of a checkpoint folder's config.json (UnsupportedArchitecture when it has none)."""
    data = json.loads((Path(model_dir) / "config.json").read_text())
    return architecture(data.get("model_type") if isinstance(data, dict) else None)


def hf_model_class(model_dir: Path):
    """GraniteForCausalLM, GraniteMoeForCausalLM, ... for the checkpoint in `model_dir`."""
    import transformers
    return getattr(transformers, checkpoint_architecture(model_dir).hf_class)


def hf_config_class(model_type: str):
    import transformers
    return getattr(transformers, architecture(model_type).hf_config_class)
