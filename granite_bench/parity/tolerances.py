"""Tolerance profiles for logit parity, one per dtype, read from suites/parity/tolerances.yaml.

A profile holds a tolerance map (top-k -> (atol, rtol), None = the whole vocabulary), the greedy
divergence tolerance and the relative error at which per-layer localisation calls a sub-block
out of tolerance. `profile_for` picks the dtype's profile, or applies a CLI override such as
"50:1e-5:0.04,5:1e-5:0.01;div=0.13" (parts not given keep the dtype's values) or a profile name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from ..resources import suite_path

DEFAULT_PATH = suite_path("parity/tolerances.yaml")

DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "f32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
}

OVERRIDE_FORMAT = (
    "expected a profile name or 'K:ATOL:RTOL[,K:ATOL:RTOL...][;div=X][;loc=Y]' with K an integer or 'all', "
    "e.g. '50:1e-5:0.04,5:1e-5:0.01;div=0.13'"
)


@dataclass(frozen=True)
class ToleranceProfile:
    name: str
    tol_map: dict[int | None, tuple[float, float]]  # top-k -> (atol, rtol); None = whole vocabulary
    divergence_tolerance: float  # a greedy divergence is acceptable below this reference logit gap
    localisation_rtol: float  # max|a-e| / max|e| of a hidden state above which a sub-block left tolerance


def _parse_k(text: str) -> int | None:
    text = str(text).strip().lower()
    if text in ("all", "none"):
        return None
    k = int(text)
    if k <= 0:
        raise ValueError(f"top-k must be positive, got {k}")
    return k


def _profile_from_yaml(name: str, entry: dict) -> ToleranceProfile:
    tol_map = {_parse_k(k): (float(v[0]), float(v[1])) for k, v in entry["tol_map"].items()}
    return ToleranceProfile(
        name=name,
        tol_map=tol_map,
        divergence_tolerance=float(entry["divergence_tolerance"]),
        localisation_rtol=float(entry["localisation_rtol"]),
    )


def load_profiles(path: Path | None = None) -> dict[str, ToleranceProfile]:
    """All profiles of a tolerances YAML (default: suites/parity/tolerances.yaml), by name."""
    data = yaml.safe_load(Path(path or DEFAULT_PATH).read_text())
    return {name: _profile_from_yaml(name, entry) for name, entry in data["profiles"].items()}


def canonical_dtype(dtype: str) -> str:
    """'bf16', 'torch.bfloat16', 'bfloat16' -> 'bfloat16'; unknown -> ValueError."""
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in DTYPE_ALIASES:
        raise ValueError(f"unknown dtype {dtype!r}: expected one of float32, bfloat16, float16")
    return DTYPE_ALIASES[key]


def _non_negative(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise ValueError(f"tolerance must be a finite non-negative number, got {text!r}")
    return value


def _parse_tol_entries(text: str) -> dict[int | None, tuple[float, float]]:
    tol_map: dict[int | None, tuple[float, float]] = {}
    for entry in text.split(","):
        fields = entry.strip().split(":")
        if len(fields) != 3:
            raise ValueError
        k, atol, rtol = _parse_k(fields[0]), _non_negative(fields[1]), _non_negative(fields[2])
        if k in tol_map:
            raise ValueError
        tol_map[k] = (atol, rtol)
    return tol_map


def parse_override(text: str, base: ToleranceProfile) -> ToleranceProfile:
    """Apply an override string to `base`; ValueError (one line, with the format) when malformed."""
    changes: dict = {}
    try:
        for part in (p.strip() for p in text.split(";")):
            if not part:
                raise ValueError
            if "=" in part:
                key, value = (s.strip().lower() for s in part.split("=", 1))
                field_name = {"div": "divergence_tolerance", "loc": "localisation_rtol"}[key]
                if field_name in changes:
                    raise ValueError
                changes[field_name] = _non_negative(value)
            elif "tol_map" in changes:
                raise ValueError
            else:
                changes["tol_map"] = _parse_tol_entries(part)
    except (ValueError, KeyError):
        raise ValueError(f"bad tolerance override {text!r}: {OVERRIDE_FORMAT}") from None
    return replace(base, name=f"{base.name}[{text.strip()}]", **changes)


def profile_for(dtype: str, override: str | None = None, path: Path | None = None) -> ToleranceProfile:
    """The tolerance profile for a dtype, or `override` (a profile name or an override string)."""
    profiles = load_profiles(path)
    if override is not None and override.strip() in profiles:
        return profiles[override.strip()]
    name = canonical_dtype(dtype)
    if name not in profiles:
        raise ValueError(f"no tolerance profile for dtype {name!r} in {path or DEFAULT_PATH}")
    base = profiles[name]
    return base if override is None else parse_override(override, base)
