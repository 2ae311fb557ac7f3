"""The registry's entries made real (torch side): the model class, converter and HF reference class of a config.

Everything outside `model/` that needs to know the architecture asks here (or the torch-free `registry`), never
branches on `model_type` itself."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import torch

from .backend.decoder import config_dict, head_plan
from .backend.head_sharding import HeadPlan
from .registry import Architecture, architecture


def architecture_of(config) -> Architecture:
    """The registry entry of a transformers config, a TP worker's plain namespace, or a config dict."""
    data = config if isinstance(config, dict) else config_dict(config)
    return architecture(data.get("model_type"))


def resolve(path: str):
    """'package.module:attribute' -> the attribute."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def build_model(config, neuron_config) -> torch.nn.Module:
    """This rank's Neuron-style model for `config` (uninitialised weights: load a converted state dict into it)."""
    return resolve(architecture_of(config).model_class)(config, neuron_config)


def convert_checkpoint(hf: Mapping[str, torch.Tensor], config, rank: int, tp: int, neuron_config
                       ) -> dict[str, torch.Tensor]:
    """HF checkpoint tensors -> the state dict of rank `rank` of `tp` for `build_model(config, neuron_config)`."""
    convert = resolve(architecture_of(config).converter)
    return convert(hf, config, rank, tp, neuron_config.dtype, fused_qkv=neuron_config.fused_qkv,
                   ep=neuron_config.moe_ep_degree)


def parallel_plan(config, tp: int, ep: int = 1) -> HeadPlan:
    """How the heads sit on `tp` ranks; TPDegreeError (one line) when this config cannot be sharded that way."""
    return head_plan(config, tp, ep)


def hf_model_class(config):
    """The transformers class HF's reference runs for this config (GraniteForCausalLM, GraniteMoeForCausalLM, ...)."""
    import transformers
    return getattr(transformers, architecture_of(config).hf_class)


def hf_config_class(model_type: str):
    import transformers
    return getattr(transformers, architecture(model_type).hf_config_class)
