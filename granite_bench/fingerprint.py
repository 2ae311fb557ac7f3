"""Fingerprints of the code that produced a cached entry, so every cache key covers it (light: no torch)."""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def package_version() -> str:
    try:
        return metadata.version("granite-bench")
    except metadata.PackageNotFoundError:
        return "unknown"


def code_fingerprint(*relative_paths: str, versions_of: tuple[str, ...] = ()) -> str:
    """sha256 (16 hex digits) over the named package files' bytes, the package version and the versions of
    `versions_of` (distribution names): a change to any of them gives a new key."""
    digest = hashlib.sha256(f"granite-bench {package_version()}".encode())
    for name in relative_paths:
        digest.update(f"\0{name}\0".encode())
        digest.update((PACKAGE_DIR / name).read_bytes())
    for dist in versions_of:
        try:
            found = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found = "absent"
        digest.update(f"\0{dist}={found}".encode())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def package_code_fingerprint() -> str:
    """code_fingerprint over every Python file of the package (and the torch and transformers versions): the code
    that measured a result, committed or not. Any edit anywhere in the package gives a new one."""
    names = sorted(str(p.relative_to(PACKAGE_DIR)) for p in PACKAGE_DIR.rglob("*.py")
                   if "__pycache__" not in p.parts)
    return code_fingerprint(*names, versions_of=("torch", "transformers"))
