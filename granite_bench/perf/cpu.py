"""Which kind of CPU a perf run measured: the CPU's model and flags, and the instruction set torch's kernels use.

The same code runs different kernels on different CPUs (AVX2-only machines have no AVX-512 and no bf16 dot-product
units), so a decode time says little without the kind of CPU it was measured on. An AVX2 machine can be emulated on
an AVX-512 one by limiting PyTorch's dispatch (`ATEN_CPU_CAPABILITY=avx2`), oneDNN (`ONEDNN_MAX_CPU_ISA=AVX2`) and
MKL, which does torch's fp32 matrix products (`MKL_ENABLE_INSTRUCTIONS=AVX2`): the kernels are then AVX2's, but the
memory system, caches and clock are still the host's, so `cpu_emulated` marks such rows.
"""

from __future__ import annotations

import torch

from ..results.metadata import cpu_flags, cpu_model, isa_limits
from ..runtime.huge_pages import thp_mode

# x86 instruction-set levels, lowest first, as torch names its dispatch capability and as the CPU flags imply it.
CAPABILITY_ORDER = ("DEFAULT", "AVX2", "AVX512")


def native_capability(flags: list[str]) -> str:
    """The highest of CAPABILITY_ORDER the CPU's flags allow."""
    if "avx512f" in flags:
        return "AVX512"
    return "AVX2" if "avx2" in flags else "DEFAULT"


def is_emulated(capability: str, flags: list[str], limits: dict[str, str]) -> bool:
    """True when the kernels run a lower instruction set than the CPU has: torch's capability is below the flags'
    level, or oneDNN or MKL is limited to an ISA below AVX-512 on an AVX-512 CPU."""
    native = native_capability(flags)
    if capability in CAPABILITY_ORDER and CAPABILITY_ORDER.index(capability) < CAPABILITY_ORDER.index(native):
        return True
    library_limits = [limits.get(name, "").upper() for name in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")]
    return native == "AVX512" and any(limit and limit != "ALL" and not limit.startswith(("AVX512", "AVX10"))
                                      for limit in library_limits)


def cpu_kind_label(capability: str, flags: list[str], limits: dict[str, str]) -> str:
    """'AVX512 +avx512_bf16 +amx_bf16', or 'AVX2 (emulated on an AVX512 CPU: ATEN_CPU_CAPABILITY=avx2 ...)'."""
    if is_emulated(capability, flags, limits):
        how = " ".join(f"{name}={value}" for name, value in limits.items())
        return f"{capability} (emulated on an {native_capability(flags)} CPU: {how})"
    extras = [f"+{flag}" for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    return " ".join([capability, *extras])


def cpu_kind_columns() -> dict:
    """The columns every perf summary row carries about the CPU it was measured on."""
    flags = cpu_flags()
    limits = isa_limits()
    capability = torch.backends.cpu.get_cpu_capability()
    return {"cpu_model": cpu_model(), "cpu_flags": " ".join(flags), "cpu_capability": capability,
            "cpu_isa_limits": " ".join(f"{name}={value}" for name, value in limits.items()),
            "cpu_emulated": is_emulated(capability, flags, limits),
            "cpu_kind": cpu_kind_label(capability, flags, limits),
            "transparent_huge_pages": thp_mode()}   # whether the weights' huge-page advice can take effect
