"""Tensor-parallel layers with neuronx-distributed's signatures and semantics.

`ColumnParallelLinear` splits the output features across ranks (optionally gathering them back),
`RowParallelLinear` splits the input features and all-reduces the partial sums, `ParallelEmbedding`
splits the embedding dimension (optimum-neuron's `shard_across_embedding=True`) and gathers it.
At tensor-parallel size 1 every collective is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed._functional_collectives as funcol
from torch import nn

from . import parallel_state as ps
from .single_row import KERNELS, REDUCED_PRECISION, kernel_for


# torch >= 2.10 names it all_gather_single (all_gather_tensor still works there but warns on every call).
_all_gather_dim0 = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor


def divide(numerator: int, denominator: int) -> int:
    if numerator % denominator:
        raise ValueError(f"{numerator} is not divisible by the tensor-parallel degree {denominator}")
    return numerator // denominator


def pad_to_multiple(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def reduce_from_tp_region(x: torch.Tensor, reduce_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sum partial results over the TP ranks, accumulating in `reduce_dtype` (gloo has no bf16 collectives)."""
    if ps.get_tensor_model_parallel_size() == 1:
        return x
    summed = funcol.all_reduce(x.to(reduce_dtype), "sum", ps.get_tensor_model_parallel_group())
    return summed.to(x.dtype)


def gather_from_tp_region(x: torch.Tensor, comm_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Concatenate each rank's slice of the last dimension."""
    world = ps.get_tensor_model_parallel_size()
    if world == 1:
        return x
    # all_gather_tensor concatenates along dim 0: move the split dim there and back.
    moved = x.to(comm_dtype).movedim(-1, 0).contiguous()
    gathered = _all_gather_dim0(moved, 0, ps.get_tensor_model_parallel_group())
    return gathered.movedim(0, -1).to(x.dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ weight[N, K]^T (+ bias) -> [..., N], as nn.functional.linear.

    One row of bf16/fp16 on CPU (a decode step at batch 1) is a matrix-vector product, and which kernel streams the
    weights fastest depends on the host: `single_row` measures the candidates once per process and this uses its
    choice. The weights stay row-major: a column-major weight streams faster through torch.mv on AVX2 kernels
    (9.6 vs 7.3 GB/s at rows of 2048), but every matrix-matrix product against it (prefill, batched decode) falls to
    a path ~60x slower."""
    if (x.device.type == "cpu" and weight.dtype in REDUCED_PRECISION and x.numel() == x.shape[-1]
            and weight.is_contiguous()):
        return KERNELS[kernel_for(weight)](x, weight, bias)   # [..., N]
    return nn.functional.linear(x, weight, bias)


class ColumnParallelLinear(nn.Module):
    """y = x W^T + b with W split by rows (output features) across TP ranks."""

    def __init__(self, input_size: int, output_size: int, bias: bool = True, gather_output: bool = True,
                 dtype: torch.dtype = torch.float32, pad: bool = False, reduce_dtype: torch.dtype = torch.float32):
        super().__init__()
        world = ps.get_tensor_model_parallel_size()
        self.input_size = input_size
        self.output_size = pad_to_multiple(output_size, world) if pad else output_size
        self.output_size_per_partition = divide(self.output_size, world)
        self.gather_output = gather_output
        self.reduce_dtype = reduce_dtype
        self.weight = nn.Parameter(torch.empty(self.output_size_per_partition, input_size, dtype=dtype),
                                   requires_grad=False)
        self.bias = (nn.Parameter(torch.zeros(self.output_size_per_partition, dtype=dtype), requires_grad=False)
                     if bias else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(x, self.weight, self.bias)
        return gather_from_tp_region(y, self.reduce_dtype) if self.gather_output else y


class RowParallelLinear(nn.Module):
    """y = x W^T + b with W split by columns (input features); the partial sums are all-reduced."""

    def __init__(self, input_size: int, output_size: int, bias: bool = True, input_is_parallel: bool = True,
                 dtype: torch.dtype = torch.float32, reduce_dtype: torch.dtype = torch.float32):
        super().__init__()
        world = ps.get_tensor_model_parallel_size()
        self.input_size = input_size
        self.output_size = output_size
        self.input_size_per_partition = divide(input_size, world)
        self.input_is_parallel = input_is_parallel
        self.reduce_dtype = reduce_dtype
        self.weight = nn.Parameter(torch.empty(output_size, self.input_size_per_partition, dtype=dtype),
                                   requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(output_size, dtype=dtype), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            rank = ps.get_tensor_model_parallel_rank()
            x = x[..., rank * self.input_size_per_partition:(rank + 1) * self.input_size_per_partition]
        y = reduce_from_tp_region(linear(x, self.weight), self.reduce_dtype)
        return y + self.bias if self.bias is not None else y


class ParallelEmbedding(nn.Module):
    """Embedding table split along the embedding dimension; each rank looks up its slice, then they are gathered."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 dtype: torch.dtype = torch.float32, shard_across_embedding: bool = True,
                 reduce_dtype: torch.dtype = torch.float32):
        super().__init__()
        if not shard_across_embedding:
            raise NotImplementedError("only shard_across_embedding=True (optimum-neuron's Granite choice) is built")
        world = ps.get_tensor_model_parallel_size()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.reduce_dtype = reduce_dtype
        self.weight = nn.Parameter(torch.empty(num_embeddings, divide(embedding_dim, world), dtype=dtype),
                                   requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return gather_from_tp_region(nn.functional.embedding(input_ids, self.weight), self.reduce_dtype)
