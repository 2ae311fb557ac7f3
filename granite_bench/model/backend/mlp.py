"""Gated (SwiGLU) MLP on tensor-parallel linears: gate and up column-parallel, down row-parallel (all-reduced)."""

from __future__ import annotations

import torch
from torch import nn

from .parallel_layers import ColumnParallelLinear, RowParallelLinear


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)), each rank holding intermediate_size / tp of the gate/up rows and down columns."""

    def __init__(self, hidden_size: int, intermediate_size: int, dtype: torch.dtype, bias: bool = False):
        super().__init__()
        self.gate_proj = ColumnParallelLinear(hidden_size, intermediate_size, bias=bias, gather_output=False,
                                              dtype=dtype)
        self.up_proj = ColumnParallelLinear(hidden_size, intermediate_size, bias=bias, gather_output=False,
                                            dtype=dtype)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias=bias, input_is_parallel=True,
                                           dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))
