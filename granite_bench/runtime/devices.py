"""Devices a runner can use: which one a name means, whether it is here, how its ranks talk (no runner imports)."""

from __future__ import annotations

import torch

from .errors import InputError
from .hardware import neuron_problem


class NeuronUnavailableError(InputError):
    """torch-neuronx / neuronx-distributed are not importable here."""


def require_neuron() -> None:
    """Stop with one line when the Neuron packages are missing."""
    problem = neuron_problem()
    if problem:
        raise NeuronUnavailableError(problem)


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
