"""Tensor-parallel layers with neuronx-distributed's signatures and semantics.

`ColumnParallelLinear` splits the output features across ranks (optionally gathering them back),
`RowParallelLinear` splits the input features and all-reduces the partial sums, `ParallelEmbedding`
splits the embedding dimension (optimum-neuron's `shard_across_embedding=True`) and gathers it.
At tensor-parallel size 1 every collective is the identity.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed._functional_collectives as funcol
from torch import nn

from . import parallel_state as ps


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


REDUCED_PRECISION = (torch.bfloat16, torch.float16)


@functools.cache
def single_row_uses_mv() -> bool:
    """Whether one row of bf16/fp16 is multiplied with torch.mv rather than linear: where torch dispatches its CPU
    kernels at AVX-512 (fixed per process: ATEN_CPU_CAPABILITY is read once)."""
    return torch.backends.cpu.get_cpu_capability() == "AVX512"


def column_major(weight: torch.Tensor) -> bool:
    """Whether a 2-D weight [N, K] is stored column by column (its transpose is contiguous), as
    use_column_major_weights leaves it."""
    return weight.dim() == 2 and weight.shape[0] > 1 and weight.t().is_contiguous()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ weight[N, K]^T (+ bias) -> [..., N], as nn.functional.linear.

    One row of bf16/fp16 on CPU (a decode step at batch 1) is a matrix-vector product, and which kernel streams the
    weights fastest depends on the CPU's kind (measured on the 4-layer granite-3.1-2b decode step, process CPU
    time; all of them accumulate in fp32): with AVX-512 kernels torch.mv over the row-major weight beats linear's
    oneDNN matrix-matrix path with one row, 81 vs 102 ms; with AVX2 kernels (no bf16 dot-product units) both are
    compute-bound on rows of 2048 (7.3 GB/s where rows of 4096 stream at 10), and torch.mv over a column-major
    weight streams at 9.6 (see use_column_major_weights)."""
    if (x.device.type == "cpu" and weight.dtype in REDUCED_PRECISION and x.numel() == x.shape[-1]
            and (column_major(weight) or (weight.is_contiguous() and single_row_uses_mv()))):
        y = torch.mv(weight, x.reshape(-1)).view(*x.shape[:-1], weight.shape[0])   # [..., N]
        return y if bias is None else y + bias
    return nn.functional.linear(x, weight, bias)


def column_major_is_faster() -> bool:
    """Whether one row of bf16/fp16 is fastest against column-major weights on this CPU: where torch dispatches its
    kernels at AVX2 (no bf16 dot products; a column-major torch.mv is an axpy over the rows of the transposed weight,
    which streams ~30% faster than any row-major kernel at the model's row lengths). With AVX-512 kernels it is 3-4x
    slower than the row-major mv; other kinds are not measured and keep the row-major layout."""
    return torch.backends.cpu.get_cpu_capability() == "AVX2"


def use_column_major_weights(module: nn.Module) -> int:
    """Store the bf16/fp16 CPU weights of every parallel linear layer in `module` column by column (same shape and
    values, transposed strides), the layout linear() streams fastest with AVX2-class kernels; matrix-matrix calls
    (prefill) take either layout. Returns the number of weights changed."""
    changed = 0
    for layer in module.modules():
        if isinstance(layer, (ColumnParallelLinear, RowParallelLinear)):
            weight = layer.weight
            if weight.device.type == "cpu" and weight.dtype in REDUCED_PRECISION and not column_major(weight):
                weight.data = weight.data.t().contiguous().t()
                changed += 1
    return changed


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
