"""`--device neuron`: the same Granite model, one traced graph per (phase, bucket), built by neuronx-distributed.

Written against the public API of torch-neuronx and neuronx-distributed (`parallel_layers.layers`,
`trace.model_builder.ModelBuilder` / `BaseModelInstance`). NOT exercised by CI: it needs a Trainium or
Inferentia instance with the Neuron SDK; everywhere else `require_neuron()` stops with one line saying what to
install and where it runs.

How the model is adapted (the CPU/CUDA model code is unchanged):
- the model is built with our per-rank shapes, then every parallel layer is swapped for neuronx-distributed's
  (`ColumnParallelLinear`, `RowParallelLinear`, `ParallelEmbedding(shard_across_embedding=True)`), keeping
  Granite's embedding multiplier and logits scaling;
- the KV cache buffers become parameters that are returned by every graph and aliased to their inputs, so the
  cache stays on device between calls (neuronx-distributed's state mechanism);
- the checkpoint given to ModelBuilder is our per-rank conversion (GQA placement, fused QKV) concatenated along
  each layer's partition dimension, so ModelBuilder's even split hands rank r exactly our shard r;
- token-generation graphs take a `slots` tensor of their bucket length: ModelBuilder routes a call to a graph by
  its input shapes, and decode buckets differ only in the KV length they attend over.
ModelBuilder owns the tensor parallelism on Neuron (one SPMD graph over the NeuronCores), so no TPRunner here.

MoE models (granitemoe, granitemoeshared) trace through the experts' static formulations (selective loading in token
generation, all experts in context encoding: backend/moe.py); their fused expert weights are plain parameters
sharded by our converter and all-reduced by our own collective, not neuronx-distributed's `ExpertMLPs`. That path
is even less exercised than the dense one: no Neuron hardware has run it.
"""

from __future__ import annotations

import inspect
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from ..model.backend import parallel_state as ps
from ..model.config import NeuronConfig
from ..model.backend.parallel_layers import ColumnParallelLinear, ParallelEmbedding, RowParallelLinear
from .devices import require_neuron
from .errors import InputError
from .runner import GraniteRunner

# -- pure helpers (no Neuron packages needed; unit-tested on CPU) ----------------------------------------------
def graph_key(phase: str, bucket: int) -> str:
    return f"{phase}_{bucket}"


def example_inputs(phase: str, bucket: int, batch_size: int) -> tuple[torch.Tensor, ...]:
    """The static inputs of one graph: context encoding (ids, mask) [B, bucket]; token generation ids [B, 1],
    positions [B] and slots [bucket] (its length is the KV length the graph attends over)."""
    if phase == "context_encoding":
        return (torch.zeros(batch_size, bucket, dtype=torch.int32), torch.ones(batch_size, bucket, dtype=torch.int32))
    return (torch.zeros(batch_size, 1, dtype=torch.int32), torch.zeros(batch_size, dtype=torch.int32),
            torch.arange(bucket, dtype=torch.int32))


def all_graphs(neuron_config: NeuronConfig) -> list[tuple[str, int]]:
    return ([("context_encoding", b) for b in neuron_config.context_encoding_buckets]
            + [("token_generation", b) for b in neuron_config.token_generation_buckets])


def partition_dims(model: nn.Module) -> dict[str, int]:
    """Parameter name -> the dimension our parallel layers split it along (absent: replicated on every rank)."""
    dims = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, ColumnParallelLinear):
            dims[prefix + "weight"] = 0
            if module.bias is not None and not module.gather_output:
                dims[prefix + "bias"] = 0
        elif isinstance(module, RowParallelLinear):
            dims[prefix + "weight"] = 1
        elif isinstance(module, ParallelEmbedding):
            dims[prefix + "weight"] = 1
    return dims


def full_checkpoint(shards: list[dict[str, torch.Tensor]], dims: dict[str, int], vocab_size: int,
                    lm_head_key: str = "lm_head.weight") -> dict[str, torch.Tensor]:
    """Concatenate per-rank shards along their partition dims, so an even split gives back shard r on rank r.
    The LM head loses its vocabulary padding: neuronx-distributed's `pad=True` head adds it again."""
    full = {}
    for key, value in shards[0].items():
        full[key] = torch.cat([s[key] for s in shards], dim=dims[key]) if key in dims else value
    if lm_head_key in full:
        full[lm_head_key] = full[lm_head_key][:vocab_size]
    return full


def first_output(outputs) -> torch.Tensor:
    """The logits of a traced graph's outputs (aliased KV-cache outputs are not returned to the host)."""
    while isinstance(outputs, (list, tuple)):
        outputs = outputs[0]
    return outputs


# -- the adapter (needs the Neuron packages) ---------------------------------------------------------------------
def supported_kwargs(cls, **kwargs) -> dict:
    """Only the keyword arguments this neuronx-distributed version accepts (reduce_dtype came later)."""
    accepted = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in kwargs.items() if k in accepted}


def nxd_layer_factory(dtype: torch.dtype):
    """Functions turning each of our parallel layers into neuronx-distributed's equivalent (same shapes)."""
    from neuronx_distributed.parallel_layers import layers as nxd

    from ..model.backend.decoder import GraniteEmbedding, GraniteHead

    class NxDGraniteHead(nxd.ColumnParallelLinear):
        """LM head: vocabulary padded to a multiple of tp and trimmed by NxD, logits divided by logits_scaling."""

        def __init__(self, ours: GraniteHead):
            super().__init__(ours.input_size, ours.vocab_size, bias=False, gather_output=True, dtype=dtype,
                             **supported_kwargs(nxd.ColumnParallelLinear, pad=True))
            self.logits_scaling = ours.logits_scaling

        def forward(self, hidden):
            return super().forward(hidden) / self.logits_scaling

    class NxDGraniteEmbedding(nxd.ParallelEmbedding):
        """Embedding split along the hidden dimension, output times embedding_multiplier."""

        def __init__(self, ours: GraniteEmbedding):
            super().__init__(ours.num_embeddings, ours.embedding_dim, ours.padding_idx, dtype=dtype,
                             shard_across_embedding=True)
            self.embedding_multiplier = ours.embedding_multiplier

        def forward(self, input_ids):
            return super().forward(input_ids) * self.embedding_multiplier

    def column(ours: ColumnParallelLinear):
        return nxd.ColumnParallelLinear(ours.input_size, ours.output_size, bias=ours.bias is not None,
                                        gather_output=ours.gather_output, dtype=dtype,
                                        **supported_kwargs(nxd.ColumnParallelLinear, reduce_dtype=torch.float32))

    def row(ours: RowParallelLinear):
        return nxd.RowParallelLinear(ours.input_size, ours.output_size, bias=ours.bias is not None,
                                     input_is_parallel=ours.input_is_parallel, dtype=dtype,
                                     **supported_kwargs(nxd.RowParallelLinear, reduce_dtype=torch.float32))

    # Most specific first: Granite's head and embedding subclass the generic layers.
    return [(GraniteHead, NxDGraniteHead), (GraniteEmbedding, NxDGraniteEmbedding),
            (ColumnParallelLinear, column), (RowParallelLinear, row)]


def swap_parallel_layers(model: nn.Module, factory) -> nn.Module:
    """Replace each of our parallel layers in `model` by the factory's equivalent, in place."""
    for name, module in list(model.named_modules()):
        for ours, make in factory:
            if isinstance(module, ours):
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child, make(module))
                break
    return model


def kv_cache_as_state(kv_cache: nn.Module) -> list[nn.Parameter]:
    """Turn the cache buffers into parameters (NxD keeps graph state in parameters aliased to outputs)."""
    states = []
    for name, buffer in list(kv_cache.named_buffers(recurse=False)):
        delattr(kv_cache, name)
        param = nn.Parameter(buffer, requires_grad=False)
        kv_cache.register_parameter(name, param)
        states.append(param)
    return states


class BucketGraph(nn.Module):
    """One (phase, bucket) entry point: returns (logits, *updated KV caches)."""

    def __init__(self, model: nn.Module, phase: str):
        super().__init__()
        self.model = model
        self.phase = phase
        self.states = kv_cache_as_state(model.kv_cache)

    def forward(self, *inputs):
        if self.phase == "context_encoding":
            input_ids, attention_mask = inputs
            logits = self.model.context_encoding(input_ids, attention_mask)
        else:
            input_ids, positions, slots = inputs
            logits = self.model.token_generation(input_ids, positions, slots.shape[0])
        return (logits, *self.states)


def make_bucket_graph(hf_config, neuron_config: NeuronConfig, phase: str) -> BucketGraph:
    """Called by ModelBuilder (inside its own parallel state) for tracing and for weight sharding."""
    from neuronx_distributed.parallel_layers import parallel_state as nxd_ps

    from ..model.auto import build_model
    ps.set_model_parallel_state(nxd_ps.get_tensor_model_parallel_size())
    model = build_model(hf_config, neuron_config)
    swap_parallel_layers(model, nxd_layer_factory(neuron_config.dtype))
    return BucketGraph(model.eval(), phase)


def model_instance(hf_config, neuron_config: NeuronConfig, phase: str):
    """A neuronx-distributed BaseModelInstance whose aliases map each KV-cache state to its output index."""
    from neuronx_distributed.trace.model_builder import BaseModelInstance

    class GraniteBucketInstance(BaseModelInstance):
        def __init__(self):
            super().__init__(module_cls=lambda: make_bucket_graph(hf_config, neuron_config, phase),
                             input_output_aliases={})

        def get(self, bucket_rank, **kwargs):
            aliases = {state: 1 + i for i, state in enumerate(self.module.states)}  # output 0 is the logits
            return self.module, aliases

    return GraniteBucketInstance()


class NeuronGraphs:
    """GraphSet's interface over the ModelBuilder executor: one traced graph per (phase, bucket)."""

    def __init__(self, executor, compile_seconds: float, graphs: list[tuple[str, int]]):
        self.executor = executor
        self.compile = True
        self.compile_counts: Counter = Counter({key: 1 for key in graphs})
        # ModelBuilder compiles every bucket in one go: the total is split evenly over the graphs.
        self.compile_seconds = {key: compile_seconds / len(graphs) for key in graphs}
        self.calls: Counter = Counter()

    def context_encoding(self, bucket: int, input_ids, attention_mask, capture=None):
        self._check(capture)
        self.calls[("context_encoding", bucket)] += 1
        return first_output(self.executor(input_ids.to(torch.int32), attention_mask.to(torch.int32))).float()

    def token_generation(self, kv_len: int, input_ids, positions, capture=None):
        self._check(capture)
        self.calls[("token_generation", kv_len)] += 1
        slots = torch.arange(kv_len, dtype=torch.int32)
        return first_output(self.executor(input_ids.to(torch.int32), positions.to(torch.int32), slots)).float()

    @staticmethod
    def _check(capture) -> None:
        if capture is not None:
            raise InputError("--device neuron: traced graphs return logits only, so per-layer localisation "
                             "(hidden-state capture) runs on --device cpu or cuda")

    def info(self) -> dict:
        return {"compile": True, "compile_counts": dict(self.compile_counts),
                "compile_seconds": dict(self.compile_seconds), "calls": dict(self.calls)}


class _NoCache:
    def reset(self) -> None:
        """Stale cache slots are never read: context encoding rewrites the prefix, decode masks past positions."""


class _NeuronModelHandle:
    kv_cache = _NoCache()


class NeuronRunner(GraniteRunner):
    """GraniteRunner's host loop over graphs traced for NeuronCores (NOT exercised by CI)."""

    def __init__(self, graphs: NeuronGraphs, model_dir: Path, hf_config, neuron_config: NeuronConfig, init: dict):
        self.model = _NeuronModelHandle()
        self.model_dir = Path(model_dir)
        self.hf_config = hf_config
        self.neuron_config = neuron_config
        self.device = "cpu"          # host tensors: the NxD executor copies inputs to the NeuronCores
        self.device_kind = "neuron"
        self.init = init
        self.graphs = graphs
        self.load_seconds = 0.0

    @classmethod
    def start(cls, model_dir: Path, hf_config, neuron_config: NeuronConfig, workdir: Path | None = None):
        """Trace and compile every (phase, bucket) graph with ModelBuilder, then load the weights on device."""
        require_neuron()
        from neuronx_distributed.trace.model_builder import ModelBuilder

        from ..model.auto import build_model
        from ..model.backend.checkpoint import load_rank_shard
        from ..reference.weights import cache_root, read_init
        from .shards import prepare_shards, shard_cache_dir

        started = time.perf_counter()
        tp = neuron_config.tp_degree
        shard_dir = prepare_shards(model_dir, hf_config, neuron_config)
        ps.set_model_parallel_state(tp)
        try:
            with torch.device("meta"):
                dims = partition_dims(build_model(hf_config, neuron_config))
        finally:
            ps.destroy_model_parallel()

        def checkpoint_loader():  # a fresh dict per call: ModelBuilder shards it in place, once per rank
            shards = [load_rank_shard(shard_dir, r) for r in range(tp)]
            full = full_checkpoint(shards, dims, hf_config.vocab_size)
            return {f"model.{key}": value for key, value in full.items()}

        workdir = workdir or cache_root() / "neuron" / shard_cache_dir(model_dir, neuron_config).name
        builder = ModelBuilder(router=None, tp_degree=tp, checkpoint_loader=checkpoint_loader,
                               compiler_workdir=str(workdir))
        graphs = all_graphs(neuron_config)
        for phase, bucket in graphs:
            builder.add(key=graph_key(phase, bucket), model_instance=model_instance(hf_config, neuron_config, phase),
                        example_inputs=[example_inputs(phase, bucket, neuron_config.batch_size)])
        compile_started = time.perf_counter()
        executor = builder.trace(initialize_model_weights=True)
        compile_seconds = time.perf_counter() - compile_started
        runner = cls(NeuronGraphs(executor, compile_seconds, graphs), model_dir, hf_config, neuron_config,
                     read_init(model_dir))
        runner.load_seconds = time.perf_counter() - started
        return runner
