"""Devices a runner can use: which one a name means, whether it is here, how its ranks talk (no runner imports)."""

from __future__ import annotations

import importlib.util

import torch

from .errors import InputError

NEURON_PACKAGES = ("torch_neuronx", "neuronx_distributed")
INSTALL_HINT = ("pip install torch-neuronx neuronx-distributed "
                "--extra-index-url https://pip.repos.neuron.amazonaws.com")


class NeuronUnavailableError(InputError):
    """torch-neuronx / neuronx-distributed are not importable here."""


def missing_neuron_packages() -> list[str]:
    return [name for name in NEURON_PACKAGES if importlib.util.find_spec(name) is None]


def require_neuron() -> None:
    """Stop with one line when the Neuron packages are missing."""
    missing = missing_neuron_packages()
    if missing:
        raise NeuronUnavailableError(
            f"--device neuron needs {', '.join(m.replace('_', '-') for m in missing)} ({INSTALL_HINT}); they run "
            f"on AWS Trainium/Inferentia instances (trn1, trn2, inf2): use --device cpu or cuda here")


def resolve_device(device: str) -> str:
    if device == "cpu":
        return "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is visible to torch here; use --device cpu")
        return "cuda"
    if device == "neuron":
        require_neuron()
        return "neuron"
    raise InputError(f"unknown --device {device!r}: choose cpu, cuda or neuron")


def check_devices(device: str, tp: int) -> None:
    """Refuse, before any process starts, a TP degree the visible devices cannot hold."""
    if device == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count < tp:
            raise InputError(f"--tp {tp} on --device cuda needs {tp} GPUs, {count} visible: lower --tp "
                             f"or run across hosts with torchrun")
    else:
        resolve_device(device)


def backend_for(device: str) -> str:
    """Collective backend per device: NCCL between GPUs, gloo on CPU (gloo reduces in fp32: no bf16 collectives)."""
    return "nccl" if device == "cuda" else "gloo"


def rank_device(device: str, local_rank: int) -> str:
    return f"cuda:{local_rank}" if device == "cuda" else "cpu"
