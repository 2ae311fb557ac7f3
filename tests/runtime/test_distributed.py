"""TPRunner: ranks started by the driver, per-rank shards, failures that name the rank, launch checks, torchrun."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from granite_bench.model.config import NeuronConfig
from granite_bench.model.backend.head_sharding import TPDegreeError
from granite_bench.model.backend.checkpoint import load_hf_state_dict, load_rank_shard
from granite_bench.model.modeling_granite import convert_hf_state_dict
from granite_bench.reference.weights import load_hf_config
from granite_bench.parity.metrics import max_logit_difference
from granite_bench.runtime import devices, shards, tp_runner
from granite_bench.runtime.select import single_process_twin
from granite_bench.runtime.tp_runner import TPRunner
from granite_bench.runtime.tp_worker import TPRankError
from granite_bench.runtime.runner import InputError
from granite_bench.runtime.select import build_runner

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]


def neuron_config(tp: int, batch_size: int = 2) -> NeuronConfig:
    return NeuronConfig(batch_size=batch_size, sequence_length=64, tp_degree=tp, max_context_length=32,
                        context_encoding_buckets=[16, 32], token_generation_buckets=[32, 64])


@pytest.fixture(scope="module")
def single(tiny_model_dir):
    return build_runner(str(tiny_model_dir), neuron_config=neuron_config(1))


@pytest.fixture(scope="module")
def tp2(tiny_model_dir):
    runner = build_runner(str(tiny_model_dir), neuron_config=neuron_config(2))
    yield runner
    runner.close()


def start(model_dir, tp: int = 2, timeout_s: float | None = None) -> TPRunner:
    return TPRunner.start(model_dir, load_hf_config(model_dir), neuron_config(tp), timeout_s=timeout_s)


def test_build_with_tp_above_one_returns_a_driver_with_the_runner_attributes(tp2, tiny_model_dir):
    assert isinstance(tp2, TPRunner)
    assert tp2.model_dir == tiny_model_dir and tp2.neuron_config.tp_degree == 2
    assert tp2.hf_config.num_attention_heads == 8 and tp2.init["seed"] == 0
    assert tp2.device == "cpu" and tp2.load_seconds > 0 and tp2.backend == "gloo"
    assert len(tp2.processes) == 2 and all(p.is_alive() for p in tp2.processes)
    assert tp2.graphs.compile_seconds == {} and dict(tp2.graphs.compile_counts) == {}


def test_tp2_context_encoding_and_decode_match_one_process(tp2, single):
    tp2.reset()
    single.reset()
    assert torch.allclose(tp2.context_encode(PROMPTS), single.context_encode(PROMPTS), atol=1e-4, rtol=0)
    step = (torch.tensor([20, 21]), torch.tensor([7, 3]))
    assert torch.allclose(tp2.token_generate(*step), single.token_generate(*step), atol=1e-4, rtol=0)


def test_single_process_twin_gives_the_tp_n_vs_tp1_baseline(tp2):
    twin = single_process_twin(tp2)
    assert twin.neuron_config.tp_degree == 1 and twin.model_dir == tp2.model_dir
    assert twin.neuron_config.context_encoding_buckets == tp2.neuron_config.context_encoding_buckets
    difference = max_logit_difference([tp2.context_encode(PROMPTS)], [twin.context_encode(PROMPTS)])
    assert 0 < difference < 1e-4  # fp32 sums in another order: close, yet not bit-identical


def test_tp2_generate_returns_rank0_tokens_logits_and_timings(tp2, single):
    ours, theirs = tp2.generate(PROMPTS, 6), single.generate(PROMPTS, 6)
    assert ours.tokens == theirs.tokens
    assert torch.allclose(ours.logits, theirs.logits, atol=1e-4, rtol=0)
    assert len(ours.timings["step_ns"]) == 5
    assert tp2.graphs.calls[("token_generation", 32)] >= 5


def test_capture_hidden_comes_back_from_rank0(tp2, single):
    _, ours = tp2.context_encode(PROMPTS, capture_hidden=True)
    _, theirs = single.context_encode(PROMPTS, capture_hidden=True)
    assert [(layer, sub) for layer, sub, _ in ours] == [(layer, sub) for layer, sub, _ in theirs]
    assert all(torch.allclose(a, b, atol=1e-4, rtol=0) for (_, _, a), (_, _, b) in zip(ours, theirs))


def test_an_input_error_on_every_rank_is_raised_as_itself_and_the_runner_stays_usable(tp2):
    with pytest.raises(InputError, match="past the KV cache"):
        tp2.token_generate(torch.tensor([1, 2]), torch.tensor([64, 3]))
    assert tp2.context_encode([[3, 4]]).shape == (1, 2, 4096)


def test_each_rank_shard_is_the_conversion_of_that_rank(tp2, tiny_model_dir):
    config = load_hf_config(tiny_model_dir)
    hf = load_hf_state_dict(tiny_model_dir)
    for rank in range(2):
        shard = load_rank_shard(tp2.shard_dir, rank)
        expected = convert_hf_state_dict(hf, config, rank, 2, torch.float32)
        assert shard.keys() == expected.keys()
        assert all(torch.equal(shard[k], expected[k]) for k in expected)
    assert sorted(p.name for p in tp2.shard_dir.glob("rank*.safetensors")) == ["rank0.safetensors",
                                                                              "rank1.safetensors"]


def test_shards_are_converted_once_and_redone_when_the_checkpoint_changes(tiny_model_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    config = load_hf_config(model_dir)
    first = shards.prepare_shards(model_dir, config, neuron_config(2))
    written = (first / "rank1.safetensors").stat().st_mtime_ns
    assert shards.prepare_shards(model_dir, config, neuron_config(2)) == first
    assert (first / "rank1.safetensors").stat().st_mtime_ns == written
    os.utime(model_dir / "model.safetensors", ns=(1, 1))
    assert shards.prepare_shards(model_dir, config, neuron_config(2)) != first


def test_a_killed_rank_ends_the_call_with_an_error_naming_it(tiny_model_dir):
    runner = start(tiny_model_dir)
    os.kill(runner.processes[1].pid, signal.SIGKILL)
    with pytest.raises(TPRankError, match=r"TP rank 1 died \(signal SIGKILL\) during context_encode"):
        runner.context_encode(PROMPTS)
    assert not any(p.is_alive() for p in runner.processes)
    with pytest.raises(TPRankError, match="closed"):
        runner.context_encode(PROMPTS)


def test_a_hung_rank_ends_the_call_with_an_error_naming_it_within_the_timeout(tiny_model_dir):
    runner = start(tiny_model_dir, timeout_s=3)
    os.kill(runner.processes[1].pid, signal.SIGSTOP)  # alive but never answers
    began = time.monotonic()
    with pytest.raises(TPRankError, match=r"TP rank 1 did not answer context_encode within \d+ s \(hung\)"):
        runner.context_encode(PROMPTS)
    assert time.monotonic() - began < 3 + 3 + 5
    assert not any(p.is_alive() for p in runner.processes)


def test_a_failure_message_puts_the_likeliest_cause_first():
    timeout = ("error", None, "RuntimeError: [gloo] Timed out waiting 3000ms for recv operation to complete")
    crash = ("error", None, "Traceback ...\nValueError: bad shard")
    assert tp_runner.describe_failure("generate", 15, {}, {1}, {0: timeout}) == (
        "TP rank 1 did not answer generate within 15 s (hung); rank 0 then failed: RuntimeError: [gloo] Timed out "
        "waiting 3000ms for recv operation to complete")
    assert tp_runner.describe_failure("generate", 15, {2: -9}, {0}, {1: crash}) == (
        "TP rank 2 died (signal SIGKILL) during generate; TP rank 1 failed during generate: ValueError: bad shard; "
        "TP rank 0 did not answer generate within 15 s")


def test_close_stops_every_rank_and_can_be_called_twice(tiny_model_dir):
    runner = start(tiny_model_dir)
    processes = list(runner.processes)
    runner.close()
    runner.close()
    assert not any(p.is_alive() for p in processes)
    assert all(p.exitcode == 0 for p in processes)


@pytest.mark.parametrize("tp, error, message", [
    (0, TPDegreeError, "--tp must be a positive integer"),
    (3, TPDegreeError, "--tp 3 does not divide hidden_size"),
    (16, TPDegreeError, "exceeds the 8 attention heads"),
    (128, TPDegreeError, "above the supported maximum"),
])
def test_bad_tp_degrees_are_refused_in_one_line_before_any_process_starts(tiny_model_dir, monkeypatch, tp,
                                                                           error, message):
    monkeypatch.setattr(tp_runner, "mp_context", lambda: pytest.fail("a process was started"))
    with pytest.raises(error, match=message) as info:
        build_runner(str(tiny_model_dir), tp_degree=tp, seq_len=64, buckets=[16, 32])
    assert "\n" not in str(info.value)


def test_cuda_tp_needs_one_visible_gpu_per_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(InputError, match="--tp 2 on --device cuda needs 2 GPUs, 1 visible"):
        devices.check_devices("cuda", 2)
    devices.check_devices("cuda", 1)


def test_collectives_use_nccl_between_gpus_and_gloo_on_cpu():
    assert devices.backend_for("cuda") == "nccl"
    assert devices.backend_for("cpu") == "gloo"
    assert devices.rank_device("cuda", 3) == "cuda:3"
    assert devices.rank_device("cpu", 3) == "cpu"


def test_collective_timeout_comes_from_the_environment_or_the_mode(monkeypatch):
    monkeypatch.delenv(tp_runner.TIMEOUT_ENV, raising=False)
    assert tp_runner.collective_timeout(False) < tp_runner.collective_timeout(True)
    monkeypatch.setenv(tp_runner.TIMEOUT_ENV, "42")
    assert tp_runner.collective_timeout(True) == 42.0
    monkeypatch.setenv(tp_runner.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="number of seconds"):
        tp_runner.collective_timeout(False)


def test_worker_modules_do_not_import_transformers():
    """Ranks start from the model and runtime modules alone; transformers would add seconds per rank."""
    code = ("import sys, granite_bench.runtime.tp_runner, granite_bench.runtime.tp_worker; "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_same_entry_point_runs_under_torchrun(tiny_model_dir, single, tmp_path):
    """Two torchrun ranks on localhost: rank 0 drives, rank 1 serves inside build and exits with 0."""
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        from granite_bench.model.config import NeuronConfig
        from granite_bench.runtime.select import build_runner

        def main():
            config = NeuronConfig(batch_size=2, sequence_length=64, tp_degree=2, max_context_length=32,
                                  context_encoding_buckets=[16, 32], token_generation_buckets=[32, 64])
            runner = build_runner({str(tiny_model_dir)!r}, neuron_config=config)
            try:
                torch.save(runner.context_encode({PROMPTS!r}), sys.argv[1])
            finally:
                runner.close()

        if __name__ == "__main__":
            main()
    """))
    out = tmp_path / "logits.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    single.reset()
    assert torch.allclose(torch.load(out), single.context_encode(PROMPTS), atol=1e-4, rtol=0)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_tp2_over_nccl_matches_one_gpu(tiny_model_dir):
    config = neuron_config(2)
    config.torch_dtype = "bfloat16"
    single_config = neuron_config(1)
    single_config.torch_dtype = "bfloat16"
    runner = build_runner(str(tiny_model_dir), neuron_config=config, device="cuda")
    try:
        assert runner.backend == "nccl"
        ours = runner.generate(PROMPTS, 4)
    finally:
        runner.close()
    theirs = build_runner(str(tiny_model_dir), neuron_config=single_config, device="cuda").generate(PROMPTS, 4)
    assert ours.tokens == theirs.tokens
