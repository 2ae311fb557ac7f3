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
        if len(raw_len) != 8:
            raise ValueError(f"{path} is not a safetensors file (shorter than its 8-byte header length)")
        (header_len,) = struct.unpack("<Q", raw_len)
        header_bytes = handle.read(header_len)
        header = json.loads(header_bytes)
        digest.update(header_bytes)
        data_start = 8 + header_len
        for name in sorted(k for k in header if k != "__metadata__"):
            begin, end = header[name]["data_offsets"]
            for a, b in _tensor_samples(data_start + begin, data_start + end):
                handle.seek(a)
                digest.update(handle.read(b - a))


def checkpoint_fingerprint(model_dir: Path) -> str:
    """sha256 hex digest of the checkpoint's content (see the module docstring for what it covers)."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256(f"granite-bench checkpoint fingerprint v{FINGERPRINT_VERSION}\n".encode())
    digest.update((model_dir / "config.json").read_bytes())
    for path in sorted(model_dir.glob("*.safetensors")):
        digest.update(f"\n{path.name}:{path.stat().st_size}\n".encode())
        _hash_safetensors(path, digest)
    return digest.hexdigest()
