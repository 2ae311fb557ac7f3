"""GraniteRunner: mixed-length batches equal each prompt alone, bucket choice, input errors, greedy generate."""

import pytest
import torch

from granite_bench.model.config import NeuronConfig
from granite_bench.reference.hf_reference import greedy_tokens, load_reference
from granite_bench.runtime.runner import GraniteRunner, InputError
from granite_bench.runtime.select import build_runner

SEQ_LEN = 96
ATOL, RTOL = 5e-5, 1e-5


def make_runner(model_dir, batch_size: int) -> GraniteRunner:
    neuron_config = NeuronConfig(batch_size=batch_size, sequence_length=SEQ_LEN, max_context_length=64,
                                 context_encoding_buckets=[16, 32, 64], token_generation_buckets=[32, 64, 96])
    return build_runner(str(model_dir), neuron_config=neuron_config)


@pytest.fixture(scope="module")
def runner(tiny_model_dir) -> GraniteRunner:
    return make_runner(tiny_model_dir, batch_size=3)


@pytest.fixture(scope="module")
def single_runner(tiny_model_dir) -> GraniteRunner:
    return make_runner(tiny_model_dir, batch_size=1)


def random_ids(length: int, seed: int, vocab: int = 4096) -> list[int]:
    return torch.randint(3, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def run(runner, prompts: list[list[int]], fed: list[list[int]]):
    """Context encoding, then the `fed` tokens one per step: (prompt logits per row, [rows, steps, V])."""
    logits = runner.context_encode(prompts)
    lengths = torch.tensor([len(p) for p in prompts])
    steps = []
    for step in range(len(fed[0])):
        next_ids = torch.tensor([row[step] for row in fed])
        steps.append(runner.token_generate(next_ids, lengths + step))
    return [logits[i, :len(p)] for i, p in enumerate(prompts)], torch.stack(steps, dim=1)


def test_mixed_length_batch_gives_each_row_the_logits_of_its_prompt_alone(runner, single_runner):
    """Rows of 5, 17 and 30 tokens: different context buckets alone (16, 32, 32) and different decode buckets."""
    prompts = [random_ids(n, seed=n) for n in (5, 17, 30)]
    fed = [random_ids(4, seed=100 + i) for i in range(3)]
    batch_prompt, batch_steps = run(runner, prompts, fed)
    for row, prompt in enumerate(prompts):
        alone_prompt, alone_steps = run(single_runner, [prompt], [fed[row]])
        torch.testing.assert_close(batch_prompt[row], alone_prompt[0], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(batch_steps[row], alone_steps[0], rtol=RTOL, atol=ATOL)


def test_context_encoding_and_decode_run_the_smallest_bucket_that_fits(runner):
    runner.graphs.calls.clear()
    runner.context_encode([random_ids(17, seed=1), random_ids(3, seed=2)])
    runner.token_generate(torch.tensor([5, 6]), torch.tensor([17, 31]))
    runner.token_generate(torch.tensor([5, 6]), torch.tensor([18, 32]))
    assert dict(runner.graphs.calls) == {("context_encoding", 32): 1, ("token_generation", 32): 1,
                                         ("token_generation", 64): 1}


def test_runner_logits_are_float32_on_cpu_and_trimmed_to_the_real_rows(runner):
    logits = runner.context_encode([random_ids(9, seed=3), random_ids(4, seed=4)])
    assert logits.dtype == torch.float32 and logits.device.type == "cpu"
    assert logits.shape == (2, 9, 4096)
    step = runner.token_generate(torch.tensor([7, 8]), torch.tensor([9, 4]))
    assert step.shape == (2, 4096)


def test_more_prompts_than_the_batch_size_is_an_input_error(runner):
    with pytest.raises(InputError, match="batch size 3"):
        runner.context_encode([[5, 6]] * 4)
    with pytest.raises(InputError, match="batch size 3"):
        runner.token_generate(torch.tensor([5] * 4), torch.tensor([1] * 4))


def test_prompt_past_the_largest_bucket_is_an_input_error(runner):
    with pytest.raises(InputError, match=r"65 tokens.*largest bucket \(64\)"):
        runner.context_encode([random_ids(65, seed=5)])


def test_empty_prompt_is_an_input_error(runner):
    with pytest.raises(InputError, match="at least one token"):
        runner.context_encode([[5, 6], []])


def test_position_past_sequence_length_is_an_input_error(runner):
    runner.context_encode([random_ids(8, seed=6)])
    runner.token_generate(torch.tensor([5]), torch.tensor([SEQ_LEN - 1]))  # the last slot still fits
    with pytest.raises(InputError, match=f"sequence_length {SEQ_LEN}"):
        runner.token_generate(torch.tensor([5]), torch.tensor([SEQ_LEN]))


def test_generate_past_sequence_length_is_an_input_error(runner):
    with pytest.raises(InputError, match="exceeds sequence_length"):
        runner.generate([random_ids(60, seed=7)], max_new_tokens=SEQ_LEN - 59)


def test_generate_equals_hf_greedy_generate(runner, tiny_model_dir):
    reference = load_reference(tiny_model_dir)
    prompts = [random_ids(n, seed=20 + n) for n in (6, 23, 11)]
    result = runner.generate(prompts, max_new_tokens=8)
    assert result.logits.shape == (3, 8, 4096)
    assert len(result.timings["step_ns"]) == 7
    for row, prompt in enumerate(prompts):
        assert result.tokens[row] == greedy_tokens(reference, prompt, 8)


def test_generate_on_a_last_position_only_runner_decodes_what_a_full_logits_runner_does(runner, tiny_model_dir):
    """output_logits off (what perf builds) once made generate index past the single returned position."""
    from granite_bench.runtime.runner import build_neuron_config
    last_only = build_runner(str(tiny_model_dir), neuron_config=build_neuron_config(
        batch_size=3, seq_len=SEQ_LEN, buckets=[16, 32, 64], output_logits=False))
    prompts = [random_ids(n, seed=40 + n) for n in (6, 23, 11)]
    ours = last_only.generate(prompts, max_new_tokens=5)
    full = runner.generate(prompts, max_new_tokens=5)
    assert ours.tokens == full.tokens
    assert torch.allclose(ours.logits, full.logits, atol=ATOL, rtol=RTOL)


def test_generate_stops_early_when_every_row_has_emitted_a_stop_token(runner, tiny_model_dir):
    prompts = [random_ids(n, seed=60 + n) for n in (6, 23, 11)]
    free = runner.generate(prompts, max_new_tokens=8).tokens
    stops = {row[2] for row in free}                 # every row reaches one of these by its third token
    stopped = runner.generate(prompts, max_new_tokens=8, stop_token_ids=stops)
    assert stopped.logits.shape[1] <= 3
    for row, tokens in zip(free, stopped.tokens):
        cut = next(i for i, t in enumerate(row) if t in stops)
        assert tokens == row[:cut + 1]


def test_every_runner_implements_the_runner_contract(runner):
    import inspect

    from granite_bench.runtime.contract import Runner
    from granite_bench.runtime.neuron import NeuronRunner
    from granite_bench.runtime.tp_runner import TPRunner
    assert isinstance(runner, Runner)
    for cls in (TPRunner, NeuronRunner):
        for method in ("context_encode", "token_generate", "generate", "reset", "close"):
            ours = inspect.signature(getattr(cls, method)).parameters
            assert list(ours) == list(inspect.signature(getattr(Runner, method)).parameters), (cls, method)


def test_capture_at_one_position_keeps_that_position_of_every_residual_stream_only(runner):
    prompts = [[5, 9, 33, 120, 7, 64], [11, 12, 13]]
    _, every = runner.context_encode(prompts, capture_hidden=True)
    _, one = runner.context_encode(prompts, capture_hidden=True, capture_position=4)
    assert [(layer, sub) for layer, sub, _ in one] == [(layer, sub) for layer, sub, _ in every]
    for (_, _, full), (_, _, at) in zip(every, one):
        assert at.shape == (2, 1, full.shape[-1]) and at.dtype == torch.float32
        assert torch.equal(at[:, 0], full[:, 4])
