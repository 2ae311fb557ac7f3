"""The canary's tasks need what they claim: the canary beats every trivial baseline by a margin, the baselines
computed here from fresh samples of each task's generator (never the eval documents)."""

import math

import pytest
import torch

from granite_bench.accuracy import baselines, canary_data
from granite_bench.accuracy.baselines import (TransformersLM, WordNgram, baseline_scores, best_of, chance,
                                              fresh_texts, load_canary)

DOCS = 60
# task -> the canary's score must be at least this much better than the best trivial baseline
# (accuracies: absolute; second-half word perplexity: a factor)
MARGIN = {"canary_recall": 0.5, "canary_lists": 0.5, "canary_copy": 0.5, "canary_text": 5.0}


@pytest.fixture(scope="module")
def canary():
    torch.set_num_threads(1)
    return TransformersLM(*load_canary())


@pytest.fixture(scope="module")
def docs():
    return {task: d[:DOCS] for task, d in canary_data.eval_documents().items()}


def test_word_ngram_probabilities_sum_to_one_over_the_vocabulary():
    model = WordNgram(4, fresh_texts("canary_text", 300))
    history = tuple(baselines.words("notes: anna red fox rome; ben"))
    total = sum(model.prob(history, w) for w in model.vocab) + model.prob(history, "never-seen-word")
    assert total == pytest.approx(1.0, abs=1e-9)


def test_baselines_train_on_fresh_samples_not_the_eval_documents(docs):
    for task, key in (("canary_recall", "prompt"), ("canary_copy", "prompt"), ("canary_text", "text"),
                      ("canary_lists", "prompt")):
        fresh = fresh_texts(task, 2000)
        assert not any(doc[key] in text for doc in docs[task] for text in fresh[:2000])


def test_a_4gram_sees_the_notes_format_but_not_the_second_halfs_content(docs):
    """The 4-gram is near-certain of the punctuation and far from certain of the restated words."""
    model = WordNgram(4, fresh_texts("canary_text", 5000))
    doc = docs["canary_text"][0]
    history = baselines.words(doc["text"][:doc["second_at"]] + " again:")
    next_name = baselines.words(doc["text"][doc["second_at"]:])[2]
    assert model.prob(tuple(history), next_name) < 0.5


def test_a_lists_answers_length_is_no_better_than_chance(docs):
    """The lists' choices differ in length, but picking by length (or the most frequent answer length) gains
    nothing over chance: the canary's accuracy there comes from the content."""
    lists = canary_data.eval_documents()["canary_lists"]
    scores = baseline_scores("canary_lists", lists, n_fresh=2000)
    for name in ("longest choice", "shortest choice", "majority"):
        assert scores[name] <= chance("canary_lists", lists) + 0.1, (name, scores[name])


@pytest.mark.nightly
@pytest.mark.parametrize("task", ["canary_recall", "canary_lists", "canary_copy", "canary_text"])
def test_the_canary_beats_every_trivial_baseline_by_a_margin(task, canary, docs):
    scores = baseline_scores(task, docs[task], canary)
    assert set(scores) >= {"majority", "1-gram", "2-gram", "3-gram", "4-gram", "canary, last 8 tokens"}
    best_name, best = best_of(task, scores)
    mine = canary.scorer("canary").score(task, docs[task])
    print(f"{task}: canary {mine:.3f}, best baseline {best_name} {best:.3f}, chance {chance(task, docs[task]):.3g}, "
          f"all {scores}")
    if baselines.HIGHER_IS_BETTER[task]:
        assert mine >= best + MARGIN[task], (mine, best_name, best)
    else:
        assert mine * MARGIN[task] <= best, (mine, best_name, best)
        assert math.isfinite(mine) and mine >= 1.0
