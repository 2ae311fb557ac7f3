"""The suites shipped inside the package (presets, tolerance profiles, parity/perf/eval suites, eval data, the
canary checkpoint), read through importlib.resources so an installed wheel finds them as a checkout does.

User-supplied suite files and checkpoint folders are plain paths and never go through here.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def suites_dir() -> Path:
    """The package's `suites/` folder on the file system.

    Its files are read by libraries that need real paths (lm-eval task folders, safetensors, tokenizers), so a
    package imported from a zip archive is refused with a one-line reason rather than half-working."""
    root = files("granite_bench") / "suites"
    if not isinstance(root, Path):
        raise RuntimeError(f"granite_bench is imported from an archive ({root}): install it as files "
                           f"(pip install, not a zipapp) so its suites can be read")
    return root


def suite_path(relative: str) -> Path:
    """A shipped suite file or folder, e.g. suite_path("parity/default.yaml")."""
    return suites_dir() / relative
