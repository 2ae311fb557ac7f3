"""Static graphs: each (phase, bucket) compiled once and reused, recompilations and graph breaks fail with the
reason, compile time recorded per graph, and compiled parity equal to eager (one preset, one bucket per phase)."""

from collections import Counter

import pytest
import torch
from torch import nn

from granite_bench.model.backend import parallel_state as ps
from granite_bench.model.config import NeuronConfig
from granite_bench.model.backend.decoder import GraniteEmbedding, GraniteHead
from granite_bench.model.modeling_granite import NeuronGraniteForCausalLM
from granite_bench.model.backend.parallel_layers import ColumnParallelLinear, RowParallelLinear
from granite_bench.model.backend.checkpoint import load_hf_state_dict
from granite_bench.model.modeling_granite import convert_hf_state_dict
from granite_bench.parity.check import run_parity
from granite_bench.parity.tolerances import profile_for
from granite_bench.reference.hf_reference import load_reference
from granite_bench.reference.weights import load_hf_config, resolve_model_dir
from granite_bench.runtime import devices, hardware, neuron
from granite_bench.runtime.graphs import (GraphBreakError, GraphInfo, GraphSet, RecompilationError, inductor_patches,
                                          recompile_reason)
from granite_bench.runtime.runner import InputError, load_rank_model
from granite_bench.runtime.select import build_runner


class ToyModel(nn.Module):
    """The two entry points of the real model, as small as a graph gets."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(16, 8, generator=torch.Generator().manual_seed(0)), requires_grad=False)

    def context_encoding(self, input_ids, attention_mask):
        return self.table[input_ids] * attention_mask[..., None]

    def token_generation(self, input_ids, positions, kv_len):
        return self.table[input_ids][..., :kv_len] + positions[:, None, None]


def ids(rows: int = 2, length: int = 4, dtype=torch.long):
    return torch.arange(rows * length, dtype=dtype).view(rows, length) % 16


@pytest.fixture(scope="module")
def compiled_toy():
    """One compiled graph per phase, each called twice."""
    graphs = GraphSet(ToyModel(), compile=True)
    for step in range(2):
        graphs.context_encoding(4, ids() + step, torch.ones(2, 4, dtype=torch.long))
        graphs.token_generation(4, ids(2, 1) + step, torch.tensor([3, 4]))
    return graphs


def test_each_graph_is_compiled_once_and_reused(compiled_toy):
    assert compiled_toy.compile_counts == {("context_encoding", 4): 1, ("token_generation", 4): 1}
    assert compiled_toy.calls == {("context_encoding", 4): 2, ("token_generation", 4): 2}


def test_compile_seconds_are_recorded_once_per_graph(compiled_toy):
    assert set(compiled_toy.compile_seconds) == {("context_encoding", 4), ("token_generation", 4)}
    assert all(seconds > 0 for seconds in compiled_toy.compile_seconds.values())


def test_compiled_outputs_equal_eager_outputs(compiled_toy):
    eager = GraphSet(compiled_toy.model, compile=False)
    mask = torch.ones(2, 4, dtype=torch.long)
    torch.testing.assert_close(compiled_toy.context_encoding(4, ids(), mask), eager.context_encoding(4, ids(), mask))


def test_a_changed_input_dtype_recompiles_and_fails_with_the_guard_that_failed(compiled_toy):
    with pytest.raises(RecompilationError, match=r"context_encoding\[4\] would recompile: .*dtype mismatch"):
        compiled_toy.context_encoding(4, ids(dtype=torch.int32), torch.ones(2, 4, dtype=torch.long))


def test_a_changed_input_shape_in_one_bucket_fails_with_the_guard_that_failed(compiled_toy):
    with pytest.raises(RecompilationError, match=r"token_generation\[4\] would recompile: .*size mismatch"):
        compiled_toy.token_generation(4, ids(3, 1), torch.tensor([3, 4, 5]))


def test_a_graph_break_fails_with_the_reason():
    @torch.compiler.disable
    def host_side(x):  # something the compiler cannot trace: a host round trip in the middle of the graph
        return x + 1

    toy = ToyModel()
    toy.context_encoding = lambda input_ids, attention_mask: host_side(toy.table[input_ids])
    graphs = GraphSet(toy, compile=True)
    with pytest.raises(GraphBreakError, match=r"context_encoding\[4\] cannot be captured as one static graph: .*"
                                              r"disable"):
        graphs.context_encoding(4, ids(), torch.ones(2, 4, dtype=torch.long))


def test_eager_mode_and_hidden_state_capture_never_compile():
    graphs = GraphSet(ToyModel(), compile=False)
    graphs.context_encoding(4, ids(), torch.ones(2, 4, dtype=torch.long))
    assert graphs.compile_counts == {} and graphs.compile_seconds == {}
    assert graphs.calls == {("context_encoding", 4): 1}


def test_token_generation_gets_cuda_graphs_on_cuda_only():
    assert inductor_patches("cuda", "token_generation") == {"triton.cudagraphs": True}
    assert inductor_patches("cuda", "context_encoding") == {}
    assert inductor_patches("cpu", "token_generation") == {}


def test_recompile_reason_keeps_the_guard_lines_on_one_line():
    message = ("Recompiling function f in x.py:1\n    triggered by the following guard failure(s):\n"
               "    - 0/0: tensor 'args[0]' dtype mismatch. expected Long, actual Int")
    assert recompile_reason(RuntimeError(message)) == "0/0: tensor 'args[0]' dtype mismatch. expected Long, actual Int"


def test_graph_info_round_trips_the_bookkeeping(compiled_toy):
    info = GraphInfo(compiled_toy.info())
    assert info.compile_counts == compiled_toy.compile_counts
    assert info.compile_seconds == compiled_toy.compile_seconds and info.calls == compiled_toy.calls


@pytest.mark.slow
def test_compiled_graphs_pass_parity_like_eager_ones():
    """tiny-gqa cut to one layer (compile time grows with the graph; one layer holds every op kind), one
    context-encoding and one token-generation bucket: two compilations, then reuse, parity against HF."""
    config = NeuronConfig(batch_size=2, sequence_length=32, max_context_length=16, context_encoding_buckets=[16],
                          token_generation_buckets=[32])
    runner = build_runner("tiny-gqa", num_layers=1, neuron_config=config, compile=True)
    prompts = [[5, 9, 200, 17, 3000, 44, 8], [1000, 2000, 3]]
    outcome = run_parity(runner, load_reference(runner.model_dir), prompts, 3, profile_for("float32"))
    assert outcome.passed
    assert runner.graphs.compile_counts == {("context_encoding", 16): 1, ("token_generation", 32): 1}
    assert runner.graphs.calls[("token_generation", 32)] > 1
    assert all(seconds > 0 for seconds in runner.graphs.compile_seconds.values())


# -- --device neuron: the adapter's CPU-checkable parts (the ModelBuilder path itself is not exercised in CI) ----


def test_neuron_without_its_packages_stops_in_one_line_saying_what_to_install_and_where(monkeypatch):
    monkeypatch.setattr(hardware.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match=r"torch-neuronx, neuronx-distributed .*pip.repos.neuron.amazonaws.com.*"
                                         r"Trainium/Inferentia") as info:
        devices.require_neuron()
    assert "\n" not in str(info.value)


def test_neuron_is_refused_before_any_weights_are_created(monkeypatch):
    import granite_bench.reference.weights as weights
    monkeypatch.setattr(hardware.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(weights, "resolve_model_dir", lambda *a, **k: pytest.fail("weights were resolved"))
    with pytest.raises(devices.NeuronUnavailableError):
        build_runner("tiny-gqa", device="neuron")


def test_every_neuron_graph_has_its_own_input_shapes():
    """ModelBuilder routes a call by input shapes: decode buckets differ by their slots tensor."""
    config = NeuronConfig(batch_size=2, sequence_length=128, context_encoding_buckets=[16, 32, 128],
                          token_generation_buckets=[32, 64, 128])
    signatures = [tuple(tuple(t.shape) for t in neuron.example_inputs(phase, bucket, 2))
                  for phase, bucket in neuron.all_graphs(config)]
    assert len(set(signatures)) == len(signatures) == 6


@pytest.mark.parametrize("preset, tp", [("tiny-gqa", 2), ("tiny-untied", 4), ("tiny-mqa", 8)])
def test_full_checkpoint_splits_evenly_back_into_each_rank_shard(preset, tp):
    """What ModelBuilder does with the checkpoint (pad the head, split every sharded tensor evenly) gives rank r
    exactly our conversion for rank r, GQA placement and fused QKV included."""
    model_dir = resolve_model_dir(preset)
    config = load_hf_config(model_dir)
    hf = load_hf_state_dict(model_dir)
    shards = [convert_hf_state_dict(hf, config, r, tp, torch.float32) for r in range(tp)]
    ps.set_model_parallel_state(tp)
    try:
        with torch.device("meta"):
            dims = neuron.partition_dims(NeuronGraniteForCausalLM(config, NeuronConfig(sequence_length=32)))
    finally:
        ps.destroy_model_parallel()
    full = neuron.full_checkpoint(shards, dims, config.vocab_size)
    assert full["lm_head.weight"].shape[0] == config.vocab_size
    padded = -(-config.vocab_size // tp) * tp
    full["lm_head.weight"] = nn.functional.pad(full["lm_head.weight"], (0, 0, 0, padded - config.vocab_size))
    for rank, shard in enumerate(shards):
        for key, value in shard.items():
            mine = full[key].chunk(tp, dim=dims[key])[rank] if key in dims else full[key]
            assert torch.equal(mine, value), key


def test_swap_parallel_layers_replaces_every_parallel_layer_most_specific_first(tiny_model_dir):
    config = load_hf_config(tiny_model_dir)
    with torch.device("meta"):
        model = NeuronGraniteForCausalLM(config, NeuronConfig(sequence_length=32))

    class Marker(nn.Module):
        def __init__(self, kind):
            super().__init__()
            self.kind = kind

    factory = [(GraniteHead, lambda m: Marker("head")), (GraniteEmbedding, lambda m: Marker("embedding")),
               (ColumnParallelLinear, lambda m: Marker("column")), (RowParallelLinear, lambda m: Marker("row"))]
    neuron.swap_parallel_layers(model, factory)
    kinds = Counter(m.kind for m in model.modules() if isinstance(m, Marker))
    layers = config.num_hidden_layers
    assert kinds == {"head": 1, "embedding": 1, "column": 3 * layers, "row": 2 * layers}  # qkv, gate, up | o, down


def test_bucket_graph_returns_the_logits_and_the_updated_cache_as_state(tiny_model_dir):
    config = NeuronConfig(batch_size=1, sequence_length=32, context_encoding_buckets=[16],
                          token_generation_buckets=[32])
    model = load_rank_model(tiny_model_dir, load_hf_config(tiny_model_dir), config)
    expected = model.context_encoding(*neuron.example_inputs("context_encoding", 16, 1))
    model.kv_cache.reset()
    graph = neuron.BucketGraph(model, "context_encoding")
    logits, *states = graph(*neuron.example_inputs("context_encoding", 16, 1))
    torch.testing.assert_close(logits, expected)
    assert len(states) == 2 * 4 and all(isinstance(s, nn.Parameter) for s in states)
    assert states[0] is model.kv_cache.k_cache_0 and states[0][:, :, :16].abs().sum() > 0
    graph.phase = "token_generation"  # a decode bucket's inputs: the slots tensor sets the KV length
    logits, *_ = graph(*neuron.example_inputs("token_generation", 32, 1))
    assert logits.shape == (1, 1, 4096)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_compiled_graphs_with_cuda_graph_decode_match_eager(tiny_model_dir, dtype):
    config = NeuronConfig(batch_size=2, sequence_length=32, max_context_length=16, context_encoding_buckets=[16],
                          token_generation_buckets=[32], torch_dtype=dtype)
    eager = build_runner(str(tiny_model_dir), neuron_config=config, device="cuda")
    compiled = build_runner(str(tiny_model_dir), neuron_config=config, device="cuda", compile=True)
    prompts = [[5, 9, 200, 17, 3000, 44, 8], [1000, 2000, 3]]
    ours, theirs = compiled.generate(prompts, 6), eager.generate(prompts, 6)
    assert ours.tokens == theirs.tokens
    torch.testing.assert_close(ours.logits, theirs.logits, atol=0.05, rtol=0.02)
    assert compiled.graphs.compile_counts == {("context_encoding", 16): 1, ("token_generation", 32): 1}
