"""Tolerance profiles for logit parity, one per dtype, read from suites/parity/tolerances.yaml.

A profile holds a tolerance map (top-k -> (atol, rtol), None = the whole vocabulary), the greedy
divergence tolerance and the relative error at which per-layer localisation calls a sub-block
out of tolerance. That threshold is derived from the dtype's measured residual-stream noise
(`hidden_noise_rtol` in the YAML): LOCALISATION_HEADROOM times it, so localisation names the first
layer whose error leaves the noise, and stays more sensitive than the logit check (a bug that adds
6e-5 of relative error to every layer's residual stream in fp32, where the noise is <= 1e-6, is
blamed on layer 0, not on the LM head). A profile may still set `localisation_rtol` itself. `profile_for` picks the dtype's profile, or applies a CLI override such as
"50:1e-5:0.04,5:1e-5:0.01;div=0.13" (parts not given keep the dtype's values) or a profile name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path


from ..resources import suite_path
from ..schemas import SchemaError, TolerancesFile, read_yaml

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


# Localisation threshold over the measured residual-stream noise of a dtype: bf16's 0.1 over its measured 4.1e-2
# (40 layers) had this headroom from the start; fp32 gets 2.5e-6 over its <= 1e-6.
LOCALISATION_HEADROOM = 2.5


@dataclass(frozen=True)
class ToleranceProfile:
    name: str
    tol_map: dict[int | None, tuple[float, float]]  # top-k -> (atol, rtol); None = whole vocabulary
    divergence_tolerance: float  # a greedy divergence is acceptable below this reference logit gap
    localisation_rtol: float  # max|a-e| / max|e| of a hidden state above which a sub-block left tolerance
    hidden_noise_rtol: float | None = None  # measured max|a-e| / max|e| of the residual stream from rounding alone
    framework_factor: float | None = None  # how much worse than HF's own model in this dtype parity may be


def localisation_threshold(entry: dict) -> float:
    """A profile entry's localisation threshold: its own `localisation_rtol`, else headroom x measured noise."""
    if "localisation_rtol" in entry:
        return float(entry["localisation_rtol"])
    return LOCALISATION_HEADROOM * float(entry["hidden_noise_rtol"])


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
        localisation_rtol=localisation_threshold(entry),
        hidden_noise_rtol=float(entry["hidden_noise_rtol"]) if "hidden_noise_rtol" in entry else None,
        framework_factor=float(entry["framework_factor"]) if "framework_factor" in entry else None,
    )


def load_profiles(path: Path | None = None) -> dict[str, ToleranceProfile]:
    """All profiles of a tolerances YAML (default: suites/parity/tolerances.yaml), by name."""
    try:
        data = read_yaml(Path(path or DEFAULT_PATH), TolerancesFile, "tolerance profiles")
    except SchemaError as err:
        raise ValueError(str(err)) from None
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


def calibrated(profile: ToleranceProfile, framework_worst: dict[str, float]) -> ToleranceProfile:
    """The profile judged against the framework's own error in this dtype on the same goldens: each top-k rtol
    becomes max(rtol, framework_factor x HF's worst err_<k>), i.e. the implementation may be at most
    framework_factor times worse than HF Transformers' own model in the same dtype, never held to less than the
    profile (a framework error below rtol / factor leaves the profile as it is). The greedy divergence tolerance
    likewise becomes max(tolerance, framework_factor x the most HF's own error in this dtype moved a reference gap
    between its top token and another of its top 50, at any position): a flip at a smaller gap is one that the
    framework's own rounding can make. KeyError when the framework file lacks one of the profile's k."""
    factor = profile.framework_factor
    if factor is None:
        return profile
    tol_map = {}
    for k, (atol, rtol) in profile.tol_map.items():
        name = "all" if k is None else f"top{k}"
        tol_map[k] = (atol, max(rtol, factor * framework_worst[f"err_{name}"]))
    divergence = max(profile.divergence_tolerance, factor * framework_worst["gap_err"])
    if tol_map == profile.tol_map and divergence == profile.divergence_tolerance:
        return profile
    return replace(profile, name=f"{profile.name}+hf-{factor:g}x", tol_map=tol_map, divergence_tolerance=divergence)
