"""Which runner a command gets: the one place that knows the single-process, TP and Neuron runners (each of them
imports none of the others' modules)."""

from __future__ import annotations

import time

from ..model.backend import parallel_state as ps
from ..model.config import NeuronConfig
from ..model.auto import parallel_plan
from .contract import Runner
from .devices import require_neuron, resolve_device
from .runner import GraniteRunner, build_neuron_config, load_rank_model


def build_runner(model: str, dtype: str = "float32", device: str = "cpu", tp_degree: int = 1, batch_size: int = 1,
                 seq_len: int = 256, buckets: list[int] | None = None, compile: bool = False,
                 num_layers: int | None = None, neuron_config: NeuronConfig | None = None,
                 moe_ep_degree: int = 1, ssm_state_dtype: str = "float32") -> Runner:
    """A loaded runner for a preset name or checkpoint directory: NeuronRunner on --device neuron, TPRunner for
    tp_degree > 1 (unless this process already is one rank of a TP group), else GraniteRunner."""
    from ..reference.weights import load_hf_config, resolve_model_dir
    if device == "neuron":
        require_neuron()  # one line before any weights are created or loaded
    start = time.perf_counter()
    model_dir = resolve_model_dir(model, num_layers=num_layers)
    hf_config = load_hf_config(model_dir)
    # refuse a bad TP degree before anything starts
    if neuron_config is None:
        parallel_plan(hf_config, tp_degree, moe_ep_degree)
        neuron_config = build_neuron_config(batch_size, seq_len, buckets, tp_degree, dtype, moe_ep_degree=moe_ep_degree,
                                            ssm_state_dtype=ssm_state_dtype)
    else:
        parallel_plan(hf_config, neuron_config.tp_degree, neuron_config.moe_ep_degree)
    if device == "neuron":  # ModelBuilder traces every bucket and owns the TP ranks on the NeuronCores
        from .neuron import NeuronRunner
        return NeuronRunner.start(model_dir, hf_config, neuron_config)
    if neuron_config.tp_degree > 1 and not ps.get_tensor_model_parallel_size() > 1:
        from .tp_runner import TPRunner  # drives tp_degree worker ranks
        return TPRunner.start(model_dir, hf_config, neuron_config, device=device, compile=compile)
    device = resolve_device(device)
    runner = GraniteRunner(load_rank_model(model_dir, hf_config, neuron_config, device), model_dir, hf_config,
                           neuron_config, device, compile)
    runner.load_seconds = time.perf_counter() - start
    return runner


def single_process_twin(runner: Runner) -> Runner:
    """A TP-1 runner on the same checkpoint, static shapes and device: the baseline of a TP-N vs TP-1 check.

    Under torchrun the driver is itself rank 0 of the TP group: the twin is built and run with the model-parallel
    state set to one process, so it issues no collective that the other ranks (serving rank 0's broadcasts) would
    have to join."""
    from .torchrun import spmd_world
    config = NeuronConfig.from_dict({**runner.neuron_config.to_dict(), "tp_degree": 1, "moe_ep_degree": 1})
    with ps.single_process_state():
        twin = build_runner(str(runner.model_dir), neuron_config=config, device=runner.device)
    return SingleProcessTwin(twin) if spmd_world() is not None else twin


class SingleProcessTwin:
    """A TP-1 runner whose every call runs with the model-parallel state of one process (see single_process_twin)."""

    def __init__(self, runner: Runner):
        self._runner = runner

    def __getattr__(self, name):
        value = getattr(self._runner, name)
        if not callable(value):
            return value

        def unsharded(*args, **kwargs):
            with ps.single_process_state():
                return value(*args, **kwargs)
        return unsharded
