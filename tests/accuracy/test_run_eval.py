"""run_eval end to end on the canary (fp32, small limit): implementation and reference agree sample by sample."""

import logging

import pytest

from granite_bench.accuracy.run import EvalOutcome, run_eval
from granite_bench.accuracy.tasks import DEFAULT_TASKS, TaskError


logging.getLogger("lm_eval").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def outcome() -> EvalOutcome:
    return run_eval("canary", DEFAULT_TASKS, dtype="float32", limit=24, batch_size=8, seq_len=128)


def test_fp32_eval_agrees_with_the_reference_on_every_task(outcome):
    summary = outcome.summary.set_index("task")
    assert sorted(summary.index) == sorted(DEFAULT_TASKS)
    assert outcome.passed, summary["failures"].to_dict()
    assert summary.loc["canary_recall", "argmax_agreement"] == 1.0
    assert summary.loc["canary_copy", "generation_agreement"] == 1.0
    assert summary["max_abs_delta_loglik"].max() < 1e-4
    assert (summary["impl_value"] - summary["ref_value"]).abs().max() < 1e-6


def test_canary_scores_far_above_chance_on_both_sides(outcome):
    summary = outcome.summary.set_index("task")
    for side in ("impl_value", "ref_value"):
        assert summary.loc["canary_recall", side] >= 0.9       # 10 choices: chance is 0.1
        assert summary.loc["canary_copy", side] >= 0.8         # chance is ~0
    assert summary.loc["canary_recall", "impl_stderr"] >= 0  # reported (0 when every answer is right)


def test_samples_have_one_row_per_request_with_both_sides(outcome):
    samples = outcome.samples
    recall = samples[samples["task"] == "canary_recall"]
    assert len(recall) == 24 * 10 and recall.groupby("doc_id")["is_gold"].sum().eq(1).all()
    assert recall[["impl_loglik", "ref_loglik"]].notna().all().all()
    copy = samples[samples["task"] == "canary_copy"]
    assert len(copy) == 24 and copy["impl_text"].notna().all() and copy["text_agrees"].all()
    assert len(outcome.worst_samples(2)) == 2 * len(DEFAULT_TASKS)


def test_settings_record_what_ran(outcome):
    settings = outcome.settings
    assert settings["dtype"] == "float32" and settings["limit"] == 24 and settings["max_length"] == 128
    assert settings["truncated"] == {}


def test_tasks_that_cannot_load_stop_the_run_with_their_lines():
    with pytest.raises(TaskError, match="unknown task"):
        run_eval("canary", ["no_such_task_anywhere"], limit=2)
