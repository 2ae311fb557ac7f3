"""The seeded-bug matrix: every bug class is caught by some task's accuracy far below the clean canary's (a
temperature-only bug, logits scaling, moves no argmax: canary_lists catches it, its choices differing in token
count); stored and drawn on the dashboard."""

import logging

import pandas as pd
import pytest
import torch

from granite_bench.accuracy import bug_matrix
from granite_bench.accuracy.bug_matrix import (FAR_BELOW, bug_verdicts, is_far_worse, matrix_rows, run_bug_matrix,
                                               store_matrix)
from granite_bench.accuracy.seeded_bugs import SEEDED_BUGS
from granite_bench.results.dashboard import build_dashboard
from granite_bench.results.store import ResultStore

LIMIT = 24


def test_far_worse_means_far_below_for_accuracy_and_a_multiple_for_perplexity():
    assert is_far_worse("canary_recall", 0.95 - FAR_BELOW, 0.95)
    assert not is_far_worse("canary_recall", 0.95 - FAR_BELOW + 0.01, 0.95)
    assert is_far_worse("canary_text", 2.0 * 3.0, 3.0) and not is_far_worse("canary_text", 5.9, 3.0)


def test_rows_and_verdicts_from_hand_made_scores():
    clean = {"canary_recall": 1.0, "canary_text": 3.0}
    scored = {"rope_interleaved": {"canary_recall": 0.1, "canary_text": 3.1},
              "logits_scaling_applied_twice": {"canary_recall": 1.0, "canary_text": 9.0}}
    frame = pd.DataFrame(matrix_rows(clean, scored, {"none": 1.0, "rope_interleaved": 1.0,
                                                     "logits_scaling_applied_twice": 1.0}))
    assert len(frame) == 3 * 2 and not frame[frame["bug"] == "none"]["far_worse"].any()
    verdicts = bug_verdicts(frame).set_index("bug")
    assert verdicts.loc["rope_interleaved", "caught_by_accuracy"]
    assert not verdicts.loc["logits_scaling_applied_twice", "caught_by_accuracy"]
    assert verdicts.loc["logits_scaling_applied_twice", "caught_by_any_task"]


@pytest.fixture(scope="module")
def matrix():
    torch.set_num_threads(1)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    return run_bug_matrix(limit=LIMIT, log=lambda line: None)


@pytest.mark.nightly
def test_the_clean_canary_is_far_above_chance_through_the_implementation(matrix):
    clean = matrix[matrix["bug"] == "none"].set_index("task")["value"]
    assert clean["canary_recall"] >= 0.9 and clean["canary_copy"] >= 0.9  # chance: 0.1 and ~0
    assert clean["canary_lists"] >= 0.9                                     # chance: 0.25


@pytest.mark.nightly
def test_every_bug_is_caught_by_accuracy_far_below_the_canarys_and_none_leaves_every_task_untouched(matrix):
    verdicts = bug_verdicts(matrix).set_index("bug")
    assert sorted(verdicts.index) == sorted(SEEDED_BUGS)
    assert verdicts["caught_by_any_task"].all(), verdicts
    assert verdicts["caught_by_accuracy"].all(), verdicts


@pytest.mark.nightly
def test_a_temperature_only_bug_is_caught_by_the_lists_accuracy_alone(matrix):
    """Dividing every logit by a constant moves no argmax: single-token choices (recall) and greedy copying are
    unchanged; only the summed log-likelihood over choices of different token counts (lists) falls."""
    scaled = matrix[matrix["bug"] == "logits_scaling_applied_twice"].set_index("task")
    assert scaled.loc["canary_recall", "change"] == pytest.approx(0.0, abs=0.05)
    assert scaled.loc["canary_copy", "change"] == 0.0
    assert scaled.loc["canary_lists", "far_worse"], scaled


@pytest.mark.nightly
def test_the_matrix_is_stored_with_run_metadata_and_drawn_on_the_dashboard(matrix, tmp_path):
    path = store_matrix(matrix, tmp_path / "results", {"model": "canary", "limit": LIMIT})
    assert path.parent.name == "schema_version=1" and path.parent.parent.name == bug_matrix.TABLE
    stored = ResultStore(tmp_path / "results").read(bug_matrix.TABLE)
    assert len(stored) == len(matrix) and {"run_id", "git_sha", "machine", "bug", "task", "value"} <= set(stored)
    page = build_dashboard(ResultStore(tmp_path / "results"), tmp_path / "site").read_text()
    table = page[page.index('id="bug-matrix"'):]
    assert table.count('<td class="fail">') == int(matrix["far_worse"].sum()) > 0
