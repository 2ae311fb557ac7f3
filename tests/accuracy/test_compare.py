"""The comparison on hand-made lm-eval outputs: agreement, |Δ loglik|, thresholds, worst samples."""

import copy
import math

import pytest

from granite_bench.accuracy.compare import compare_runs, load_thresholds, worst_samples

TYPES = {"mc": "multiple_choice", "gen": "generate_until", "text": "loglikelihood_rolling"}


def mc_sample(doc_id, lls, gold):
    best = max(range(len(lls)), key=lls.__getitem__)
    return {"doc_id": doc_id, "target": gold, "filter": "none", "metrics": ["acc"], "acc": float(best == gold),
            "resps": [[(ll, False)] for ll in lls]}


def run(mc_lls, texts, rolling):
    samples = {
        "mc": [mc_sample(i, lls, 0) for i, lls in enumerate(mc_lls)],
        "gen": [{"doc_id": i, "target": "abc", "filter": "strip", "metrics": ["exact_match"],
                 "exact_match": float(t.strip() == "abc"), "resps": [[t]]} for i, t in enumerate(texts)],
        "text": [{"doc_id": i, "filter": "none", "metrics": ["word_perplexity"], "word_perplexity": (ll, 10),
                  "resps": [[ll]]} for i, ll in enumerate(rolling)],
    }
    acc = sum(s["acc"] for s in samples["mc"]) / len(mc_lls)
    em = sum(s["exact_match"] for s in samples["gen"]) / len(texts)
    ppl = math.exp(-sum(rolling) / (10 * len(rolling)))
    results = {"mc": {"alias": "mc", "acc,none": acc, "acc_stderr,none": 0.1},
               "gen": {"alias": "gen", "exact_match,strip": em, "exact_match_stderr,strip": 0.1},
               "text": {"alias": "text", "word_perplexity,none": ppl, "word_perplexity_stderr,none": "N/A"}}
    return {"samples": samples, "results": results}


@pytest.fixture
def reference():
    return run(mc_lls=[[-1.0, -2.0, -3.0], [-2.0, -1.0, -3.0]], texts=[" abc", " abd"], rolling=[-20.0, -30.0])


def test_identical_runs_agree_fully_and_pass(reference):
    samples, summary = compare_runs(copy.deepcopy(reference), reference, TYPES, load_thresholds("float32"), "float32")
    assert len(samples) == 3 * 2 + 2 + 2
    assert summary["passed"].all()
    by_task = summary.set_index("task")
    assert by_task.loc["mc", "argmax_agreement"] == 1.0
    assert by_task.loc["mc", "impl_value"] == by_task.loc["mc", "ref_value"] == 0.5
    assert by_task.loc["gen", "generation_agreement"] == 1.0
    assert by_task.loc["text", "max_abs_delta_loglik"] == 0.0


def test_small_float_noise_passes_float32_thresholds(reference):
    impl = run(mc_lls=[[-1.00001, -2.0, -3.0], [-2.0, -1.00002, -3.0]], texts=[" abc", " abd"],
               rolling=[-20.00003, -30.0])
    _, summary = compare_runs(impl, reference, TYPES, load_thresholds("float32"), "float32")
    assert summary["passed"].all(), summary["failures"].tolist()
    assert summary.set_index("task").loc["mc", "max_abs_delta_loglik"] == pytest.approx(2e-5)


def test_a_flipped_choice_fails_with_its_agreement_and_accuracy_named(reference):
    impl = run(mc_lls=[[-1.0, -2.0, -3.0], [-0.5, -1.0, -3.0]], texts=[" abc", " abd"], rolling=[-20.0, -30.0])
    samples, summary = compare_runs(impl, reference, TYPES, load_thresholds("float32"), "float32")
    mc = summary.set_index("task").loc["mc"]
    assert not mc["passed"]
    assert mc["argmax_agreement"] == 0.5
    assert mc["difference"] == pytest.approx(0.5)
    assert "argmax agreement" in mc["failures"] and "acc difference" in mc["failures"]
    assert summary.set_index("task").loc["gen", "passed"]


def test_a_different_generation_fails_and_comes_first_among_worst_samples(reference):
    impl = run(mc_lls=[[-1.0, -2.0, -3.0], [-2.0, -1.0, -3.0]], texts=[" abc", " xyz"], rolling=[-20.0, -30.0])
    samples, summary = compare_runs(impl, reference, TYPES, load_thresholds("float32"), "float32")
    gen = summary.set_index("task").loc["gen"]
    assert not gen["passed"] and gen["generation_agreement"] == 0.5
    worst = worst_samples(samples, n=1)
    assert worst.set_index("task").loc["gen", "impl_text"] == " xyz"


def test_perplexity_is_judged_by_ratio_and_bf16_is_looser(reference):
    impl = run(mc_lls=[[-1.0, -2.0, -3.0], [-2.0, -1.0, -3.0]], texts=[" abc", " abd"], rolling=[-20.2, -30.0])
    _, fp32 = compare_runs(impl, reference, TYPES, load_thresholds("float32"), "float32")
    _, bf16 = compare_runs(impl, reference, TYPES, load_thresholds("bfloat16"), "bfloat16")
    assert "word_perplexity ratio" in fp32.set_index("task").loc["text", "failures"]
    assert bf16["passed"].all()


def test_unknown_dtype_thresholds_are_refused():
    with pytest.raises(ValueError, match="float8"):
        load_thresholds("float8")
