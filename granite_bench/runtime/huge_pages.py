"""Weights in transparent huge pages: what a memory-bound CPU decode streams fastest.

A decode step at batch 1 reads every weight once, so its speed is the rate at which one core streams memory. With
4 KiB pages that rate is limited by TLB misses and by the hardware prefetchers stopping at every page boundary; with
2 MiB pages the same read runs markedly faster (measured on this project's AVX-512 host, one thread, a 1 GiB
matrix-vector product: 11.4 -> 15.2 GB/s). Linux only gives an allocation huge pages when transparent huge pages
are `always` on, or when the allocation is advised with MADV_HUGEPAGE where they are `madvise` (the usual default);
PyTorch's CPU allocator advises nothing unless THP_MEM_ALLOC_ENABLE is set for the whole process.

`huge_page_tensor` allocates one tensor from an anonymous mapping advised for huge pages (aligned to 2 MiB);
`move_to_huge_pages` copies a module's large CPU parameters and buffers into one such mapping, keeping their
shapes, strides (a transposed layout stays transposed), values and sharing. Where the OS has no MADV_HUGEPAGE (not
Linux) nothing moves; where huge pages are `never`, the mapping is ordinary memory: correct either way, only the
speed differs.
"""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path

import torch
from torch import nn

HUGE_PAGE = 2 * 2**20
ALIGN = 64                       # bytes: every tensor starts on a cache line
MIN_BYTES = HUGE_PAGE            # smaller tensors gain nothing and stay where they are
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode(setting: Path = THP_SETTING) -> str:
    """The kernel's transparent huge page mode: 'always', 'madvise' or 'never' (the bracketed word), or 'unknown'."""
    try:
        text = setting.read_text()
    except OSError:
        return "unknown"
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else "unknown"


def huge_pages_available() -> bool:
    return hasattr(mmap, "MADV_HUGEPAGE")


def _align(offset: int, alignment: int) -> int:
    return -(-offset // alignment) * alignment


def _advised_mapping(nbytes: int) -> tuple[mmap.mmap, int]:
    """An anonymous private mapping of at least `nbytes` advised for huge pages, and the offset of its first 2 MiB
    boundary (the kernel aligns the mapping to pages only, so one huge page more is mapped to start on one)."""
    mapping = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mapping.madvise(mmap.MADV_HUGEPAGE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
    return mapping, (-address) % HUGE_PAGE


def _span(shape, stride) -> int:
    """Elements a tensor of this shape and stride reaches from its first one."""
    if any(size == 0 for size in shape):
        return 0
    return 1 + sum((size - 1) * step for size, step in zip(shape, stride))


def _view(mapping: mmap.mmap, offset: int, shape, stride, dtype: torch.dtype) -> torch.Tensor:
    """A tensor over mapping[offset:] with this dtype, shape and strides."""
    flat = torch.frombuffer(mapping, dtype=dtype, count=_span(shape, stride), offset=offset)
    return flat.as_strided(shape, stride)


def huge_page_tensor(shape, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor in memory advised for huge pages (ordinary memory where the OS has no
    such advice)."""
    if not huge_pages_available():
        return torch.empty(shape, dtype=dtype)
    shape = torch.Size(shape)
    stride = torch.empty(shape, device="meta").stride()
    itemsize = torch.empty(0, dtype=dtype).element_size()
    mapping, start = _advised_mapping(max(1, shape.numel()) * itemsize)
    return _view(mapping, start, shape, stride, dtype)


def _dense(t: torch.Tensor) -> bool:
    """Whether t covers exactly its own storage from offset 0: contiguous, or contiguous once its dimensions are
    put in decreasing stride order (a transposed layout)."""
    order = sorted(range(t.dim()), key=lambda d: -t.stride(d))
    return (t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()
            and t.permute(order).is_contiguous())


def move_to_huge_pages(module: nn.Module, min_bytes: int = MIN_BYTES) -> int:
    """Copy every CPU parameter and buffer of `module` of at least `min_bytes` (dense ones: contiguous or a
    transposed layout) into one mapping advised for huge pages, in place of the old memory; tensors shared between
    modules stay shared. Returns the bytes moved (0 where the OS has no huge-page advice)."""
    if not huge_pages_available():
        return 0
    slots: dict[tuple, list[tuple[nn.Module, str]]] = {}   # (data_ptr, shape, stride, dtype) -> where it is used
    for owner in module.modules():
        for kind in ("_parameters", "_buffers"):
            for name, tensor in getattr(owner, kind).items():
                if (tensor is not None and tensor.device.type == "cpu" and tensor.nbytes >= min_bytes
                        and _dense(tensor)):
                    key = (tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
                    slots.setdefault(key, []).append((owner, name))
    if not slots:
        return 0
    offsets, total = {}, 0
    for key in slots:
        offsets[key] = total
        _, shape, stride, dtype = key
        total = _align(total + _span(shape, stride) * torch.empty(0, dtype=dtype).element_size(), ALIGN)
    mapping, start = _advised_mapping(total)
    for key, uses in slots.items():
        _, shape, stride, dtype = key
        new = _view(mapping, start + offsets[key], shape, stride, dtype)
        for owner, name in uses:
            old = owner._parameters[name] if name in owner._parameters else owner._buffers[name]
            with torch.no_grad():
                if old.data_ptr() != new.data_ptr():
                    new.copy_(old)
            if isinstance(old, nn.Parameter):
                old.data = new               # the Parameter object (and whoever holds it) stays the same
            else:
                owner._buffers[name] = new
    return total
