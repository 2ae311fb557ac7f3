"""Is the hardware a --device names here? Answered without importing torch (standard library only), so a run asked
for a GPU or a NeuronCore the machine lacks is refused in a second, before torch loads; runtime/devices.py asks
torch itself once it has loaded."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from pathlib import Path

NEURON_PACKAGES = ("torch_neuronx", "neuronx_distributed")
NEURON_INSTALL_HINT = ("pip install torch-neuronx neuronx-distributed "
                       "--extra-index-url https://pip.repos.neuron.amazonaws.com")
NVIDIA_PROC = Path("/proc/driver/nvidia")


def missing_neuron_packages() -> list[str]:
    """The Neuron packages that are not installed (found by their import spec, nothing imported)."""
    return [name for name in NEURON_PACKAGES if importlib.util.find_spec(name) is None]


def neuron_problem() -> str | None:
    missing = missing_neuron_packages()
    if not missing:
        return None
    return (f"--device neuron needs {', '.join(m.replace('_', '-') for m in missing)} ({NEURON_INSTALL_HINT}); they "
            f"run on AWS Trainium/Inferentia instances (trn1, trn2, inf2): use --device cpu or cuda here")


def torch_cuda_build() -> str | None:
    """The CUDA version the installed torch was built for ('12.8'), None for a CPU-only build; read from
    torch/version.py as text."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return None
    try:
        text = (Path(spec.origin).parent / "version.py").read_text()
    except OSError:
        return "unknown"
    found = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
    return found.group(1) if found else None


def visible_gpus(proc: Path = NVIDIA_PROC) -> int:
    """NVIDIA GPUs the driver lists (/proc/driver/nvidia/gpus), narrowed by CUDA_VISIBLE_DEVICES when it is set."""
    gpus = proc / "gpus"
    count = len(list(gpus.iterdir())) if gpus.is_dir() else 0
    if count == 0 and shutil.which("nvidia-smi") and proc.exists():
        count = 1  # a driver without the per-GPU listing: at least one, torch counts them later
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip()]
        if not ids or ids[0].strip().startswith("-"):
            return 0
        count = min(count, len(ids))
    return count


def cuda_problem(tp: int = 1) -> str | None:
    if torch_cuda_build() is None:
        return "--device cuda: the installed torch is a CPU-only build (no CUDA): install a CUDA build of torch or " \
               "use --device cpu"
    count = visible_gpus()
    if count == 0:
        return "--device cuda: no NVIDIA GPU or driver here (/proc/driver/nvidia absent or no GPU visible): use " \
               "--device cpu"
    if count < tp:
        return f"--tp {tp} on --device cuda needs {tp} GPUs, {count} visible: lower --tp or run across hosts " \
               f"with torchrun"
    return None
