"""A content fingerprint of a checkpoint directory: the same files give the same fingerprint on any machine, and a
16 GB checkpoint is fingerprinted by reading a few MB.

What is hashed (sha256): config.json's bytes; for every *.safetensors file (sorted by name) its name, its size, its
whole header (every tensor's name, dtype, shape and byte range) and three samples of each tensor's bytes (the first,
middle and last 4 KiB of its data, or all of it when shorter than 12 KiB).

What it detects: another shape, dtype, tensor set, sharding or config; another seed or init (every tensor's first
bytes change); a checkpoint truncated or re-saved differently; a tensor edited within a sampled range.
What it cannot detect: a change confined to the unsampled bytes of a tensor larger than 12 KiB (e.g. one weight
edited in the middle of a large matrix, outside the three samples). Paths and modification times are not part of
it, so a copy or a fresh clone of the same files keeps its goldens.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from .presets import PresetError

SAMPLE_BYTES = 4096
FINGERPRINT_VERSION = 1


def _tensor_samples(start: int, end: int) -> list[tuple[int, int]]:
    """Byte ranges [a, b) to read from one tensor's data range [start, end)."""
    if end - start <= 3 * SAMPLE_BYTES:
        return [(start, end)]
    middle = start + (end - start) // 2 - SAMPLE_BYTES // 2
    return [(start, start + SAMPLE_BYTES), (middle, middle + SAMPLE_BYTES), (end - SAMPLE_BYTES, end)]


def _hash_safetensors(path: Path, digest) -> None:
    with open(path, "rb") as handle:
        raw_len = handle.read(8)
        (header_len,) = struct.unpack("<Q", raw_len) if len(raw_len) == 8 else (-1,)
        header_bytes = handle.read(header_len) if 0 < header_len < 100_000_000 else b""
        try:
            header = json.loads(header_bytes)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise PresetError(f"{path} is not a readable safetensors file: re-download or re-create the "
                              f"checkpoint") from None
        digest.update(header_bytes)
        data_start = 8 + header_len
        for name in sorted(k for k in header if k != "__metadata__"):
            begin, end = header[name]["data_offsets"]
            for a, b in _tensor_samples(data_start + begin, data_start + end):
                handle.seek(a)
                digest.update(handle.read(b - a))


def check_index(model_dir: Path) -> None:
    """A sharded checkpoint's index must name only files that are there (PresetError, one line, otherwise)."""
    index = model_dir / "model.safetensors.index.json"
    if not index.exists():
        if not (model_dir / "model.safetensors").exists():
            raise PresetError(f"{model_dir} has no model.safetensors nor model.safetensors.index.json: point --model "
                              f"at a safetensors Granite checkpoint")
        return
    try:
        files = set(json.loads(index.read_text())["weight_map"].values())
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise PresetError(f"{index} is not a safetensors index (no weight_map): re-download or re-create the "
                          f"checkpoint") from None
    for name in sorted(files):
        if not (model_dir / name).exists():
            raise PresetError(f"checkpoint file {model_dir / name} (named by {index.name}) is missing: re-download "
                              f"or re-create the checkpoint")


def content_fingerprint(model_dir: Path) -> str:
    """sha256 hex digest of the checkpoint's content (see the module docstring for what it covers)."""
    model_dir = Path(model_dir)
    check_index(model_dir)
    digest = hashlib.sha256(f"granite-bench checkpoint fingerprint v{FINGERPRINT_VERSION}\n".encode())
    digest.update((model_dir / "config.json").read_bytes())
    for path in sorted(model_dir.glob("*.safetensors")):
        digest.update(f"\n{path.name}:{path.stat().st_size}\n".encode())
        _hash_safetensors(path, digest)
    return digest.hexdigest()
