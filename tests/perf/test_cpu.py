"""Which kind of CPU a perf row was measured on: flags, torch's kernel capability, emulation marked."""

import subprocess
import sys

import pytest

from granite_bench.perf.cpu import cpu_kind_columns, cpu_kind_label, is_emulated, native_capability
from granite_bench.results.metadata import cpu_flags

AVX512_FLAGS = ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]
EMULATION = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def test_native_capability_is_the_highest_level_the_flags_allow():
    assert native_capability(AVX512_FLAGS) == "AVX512"
    assert native_capability(["avx2"]) == "AVX2"
    assert native_capability([]) == "DEFAULT"


def test_avx2_kernels_on_an_avx512_cpu_are_emulation():
    assert is_emulated("AVX2", AVX512_FLAGS, EMULATION)
    assert is_emulated("AVX512", AVX512_FLAGS, {"ONEDNN_MAX_CPU_ISA": "AVX2"})     # oneDNN alone limited
    assert is_emulated("AVX512", AVX512_FLAGS, {"MKL_ENABLE_INSTRUCTIONS": "AVX2"})  # MKL alone limited
    assert not is_emulated("AVX512", AVX512_FLAGS, {})
    assert not is_emulated("AVX512", AVX512_FLAGS, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"})


def test_an_avx2_machine_running_avx2_kernels_is_not_emulation():
    assert not is_emulated("AVX2", ["avx2"], {})
    assert not is_emulated("AVX2", ["avx2"], {"ONEDNN_MAX_CPU_ISA": "AVX2"})


def test_the_kind_label_names_bf16_units_natively_and_the_limits_when_emulated():
    assert cpu_kind_label("AVX512", AVX512_FLAGS, {}) == "AVX512 +avx512_bf16 +amx_bf16"
    assert cpu_kind_label("AVX2", ["avx2"], {}) == "AVX2"
    label = cpu_kind_label("AVX2", AVX512_FLAGS, EMULATION)
    assert label.startswith("AVX2 (emulated on an AVX512 CPU") and "ONEDNN_MAX_CPU_ISA=AVX2" in label


def test_the_columns_carry_torchs_own_capability():
    import torch
    columns = cpu_kind_columns()
    assert columns["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert columns["cpu_flags"].split() == cpu_flags()
    assert isinstance(columns["cpu_emulated"], bool) and columns["cpu_kind"].startswith(columns["cpu_capability"])
    assert columns["transparent_huge_pages"] in ("always", "madvise", "never", "unknown")


@pytest.mark.skipif("avx512f" not in cpu_flags(), reason="emulating AVX2 needs an AVX-512 CPU")
def test_a_process_limited_to_avx2_records_avx2_kernels_as_emulated():
    import os
    code = ("from granite_bench.perf.cpu import cpu_kind_columns; "
            "r = cpu_kind_columns(); print(r['cpu_capability'], r['cpu_emulated'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, **EMULATION})
    assert done.stdout.split() == ["AVX2", "True"]
