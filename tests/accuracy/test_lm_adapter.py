"""GraniteRunnerLM against lm-eval's own HFLM on the HF reference, on the trained canary, in fp32."""

import json
import logging

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from granite_bench.accuracy.lm_adapter import GraniteRunnerLM
from granite_bench.accuracy.tasks import EVAL_DIR
from granite_bench.reference.hf_reference import load_reference
from granite_bench.reference.weights import resolve_model_dir
from granite_bench.runtime.select import build_runner


logging.getLogger("lm_eval").setLevel(logging.ERROR)
TOL = 1e-4


def docs(task: str, n: int) -> list[dict]:
    lines = (EVAL_DIR / task / f"{task}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:n]]


def loglikelihood_requests() -> list[Instance]:
    pairs = [(d["prompt"], " " + choice) for d in docs("canary_recall", 3) for choice in d["choices"]]
    pairs += [(d["prompt"], " " + d["target"] + "\n") for d in docs("canary_copy", 4)]  # multi-token
    pairs += [("copy: abc -> ", "abc"), ("", "recall: K 12")]  # trailing space moved; empty context
    return [Instance("loglikelihood", {}, pair, i, ("probe", i, 1)) for i, pair in enumerate(pairs)]


def rolling_requests(n: int = 4) -> list[Instance]:
    return [Instance("loglikelihood_rolling", {}, (d["text"],), i, ("probe", i, 1))
            for i, d in enumerate(docs("canary_text", n))]


def generation_requests(n: int = 6) -> list[Instance]:
    kwargs = {"until": [".", "\n"], "max_gen_toks": 16, "do_sample": False}
    return [Instance("generate_until", {}, (d["prompt"], dict(kwargs)), i, ("probe", i, 1))
            for i, d in enumerate(docs("canary_copy", n))]


@pytest.fixture(scope="module")
def runner():
    return build_runner("canary", dtype="float32", batch_size=4, seq_len=128)


@pytest.fixture(scope="module")
def reference():
    return load_reference(resolve_model_dir("canary"))


def adapter(runner, max_length=None):
    lm = GraniteRunnerLM(runner, max_length=max_length)
    return lm


def hflm(reference, tokenizer, max_length):
    return HFLM(pretrained=reference, tokenizer=tokenizer, max_length=max_length, batch_size=3, device="cpu")


def assert_same_loglikelihoods(impl, ref):
    assert len(impl) == len(ref)
    for (impl_ll, impl_greedy), (ref_ll, ref_greedy) in zip(impl, ref):
        assert abs(impl_ll - ref_ll) < TOL
        assert impl_greedy == ref_greedy


def test_loglikelihoods_match_hflm_on_the_reference(runner, reference):
    impl = adapter(runner)
    ref = hflm(reference, impl.tokenizer, impl.max_length)
    requests = loglikelihood_requests()
    assert_same_loglikelihoods(impl.loglikelihood(requests), ref.loglikelihood(requests))
    assert sum(impl.truncated.values()) == 0


def test_requests_longer_than_max_length_are_truncated_like_hflm_and_counted(runner, reference):
    impl = adapter(runner, max_length=24)  # recall prompts are 40-55 tokens
    ref = hflm(reference, impl.tokenizer, 24)
    requests = loglikelihood_requests()
    assert_same_loglikelihoods(impl.loglikelihood(requests), ref.loglikelihood(requests))
    assert impl.truncated["probe"] >= 30


def test_rolling_loglikelihoods_match_hflm_over_several_windows(runner, reference):
    impl = adapter(runner, max_length=32)  # stories are ~90 tokens: 3-4 windows each
    ref = hflm(reference, impl.tokenizer, 32)
    requests = rolling_requests()
    impl_ll, ref_ll = impl.loglikelihood_rolling(requests), ref.loglikelihood_rolling(requests)
    assert impl_ll == pytest.approx(ref_ll, abs=TOL)
    full = adapter(runner).loglikelihood_rolling(requests)  # one window each
    assert full != pytest.approx(impl_ll, abs=1e-2)  # the windows really cut the context


def test_generation_matches_hflm_text_for_text(runner, reference):
    impl = adapter(runner)
    ref = hflm(reference, impl.tokenizer, impl.max_length)
    requests = generation_requests()
    impl_text = impl.generate_until(requests)
    assert impl_text == ref.generate_until(requests)
    assert all("\n" not in text and "." not in text for text in impl_text)


def test_generation_stops_early_at_stop_sequences_and_gives_the_text_of_a_full_length_run(runner):
    impl = adapter(runner)
    requests = [Instance("generate_until", {}, (d["prompt"], {"until": ["\n"], "max_gen_toks": 48,
                                                                "do_sample": False}), i, ("probe", i, 1))
                for i, d in enumerate(docs("canary_copy", 4))]
    decode_calls = lambda: sum(n for (phase, _), n in runner.graphs.calls.items() if phase == "token_generation")
    before = decode_calls()
    texts = impl.generate_until(requests)
    steps = decode_calls() - before
    assert steps < 47                               # one batch of four: a full-length run takes 47 decode steps
    prompts = [impl.generation_prompt(r, 48) for r in requests]
    full = runner.generate(prompts, 48).tokens      # no stop tokens: all 48
    assert texts == [impl.finish_text(tokens, ["\n", impl.tok_decode([impl.eot_token_id], False)])
                     for tokens in full]


def test_generation_prompt_is_left_truncated_to_leave_room_for_new_tokens(runner):
    impl = adapter(runner, max_length=20)
    request = generation_requests(1)[0]
    long_prompt = ("copy: " + "x" * 60 + " ->", request.args[1])
    tokens = impl.generation_prompt(Instance("generate_until", {}, long_prompt, 0, ("probe", 0, 1)), 16)
    assert len(tokens) == 20 - 16
    assert tokens == impl.tok_encode(long_prompt[0])[-4:]
    assert impl.truncated["probe"] == 1


def test_sampling_is_refused(runner):
    impl = adapter(runner)
    request = Instance("generate_until", {}, ("copy: ab ->", {"until": ["\n"], "do_sample": True,
                                                              "temperature": 0.7}), 0)
    with pytest.raises(ValueError, match="greedily"):
        impl.generate_until([request])


def test_finish_text_stops_at_eos_and_at_the_first_stop_string(runner):
    impl = adapter(runner)
    tok = impl.tokenizer
    tokens = tok.encode(" abc", add_special_tokens=False) + [tok.eos_token_id] + tok.encode(" zzz",
                                                                                          add_special_tokens=False)
    assert impl.finish_text(tokens, ["\n", tok.eos_token]) == " abc"
    assert impl.finish_text(tok.encode(" ab\ncd", add_special_tokens=False), ["\n"]) == " ab"


def test_batches_are_packed_into_the_runner_batch_size(runner, monkeypatch):
    impl = adapter(runner)
    rows_per_call = []
    original = runner.context_encode

    def counting(input_ids, *args, **kwargs):
        rows_per_call.append(len(input_ids))
        return original(input_ids, *args, **kwargs)

    monkeypatch.setattr(runner, "context_encode", counting)
    impl.loglikelihood(loglikelihood_requests())
    assert max(rows_per_call) <= runner.neuron_config.batch_size
    # 3 recall prompts (10 one-token choices share one row each) + 4 copy + 2 others = 9 distinct inputs
    assert sum(rows_per_call) == 9


def test_max_length_is_the_largest_bucket_within_the_kv_cache(runner):
    assert adapter(runner).max_length == max(runner.neuron_config.context_encoding_buckets)
    assert adapter(runner).max_length <= runner.neuron_config.sequence_length
    assert torch.is_tensor(runner.context_encode([[1, 2, 3]]))
