"""Each seeded bug really changes what the implementation computes, where it claims to (context encoding, or only
token generation), and is gone again once its patch exits."""

import pytest
import torch

from granite_bench.accuracy.seeded_bugs import SEEDED_BUGS
from granite_bench.runtime.select import build_runner

PROMPTS = [[5, 17, 42, 99, 7, 23, 61, 3, 88, 12], [9, 31, 4, 77, 150, 2]]
NEW_TOKENS = 5
BUG_CLASSES = {"attention scale", "multipliers", "logits scaling", "RoPE", "GQA mapping", "KV cache position",
               "stale cache", "norm eps"}


@pytest.fixture(scope="module")
def runner():
    torch.set_num_threads(1)
    return build_runner("canary", dtype="float32", batch_size=2, seq_len=64)


def logits(runner) -> torch.Tensor:
    """[B, NEW_TOKENS, V]: the first step from context encoding, the rest from token generation."""
    runner.reset()
    return runner.generate(PROMPTS, NEW_TOKENS).logits


@pytest.fixture(scope="module")
def clean(runner):
    return logits(runner)


def test_the_bugs_cover_every_bug_class():
    assert {bug.bug_class for bug in SEEDED_BUGS.values()} == BUG_CLASSES


@pytest.mark.parametrize("name", list(SEEDED_BUGS))
def test_a_seeded_bug_changes_the_output_where_it_claims_and_is_undone_on_exit(name, runner, clean):
    bug = SEEDED_BUGS[name]
    with bug.patch():
        broken = logits(runner)
    first_step_moved = (broken[:, 0] - clean[:, 0]).abs().max().item()
    later_steps_moved = (broken[:, 1:] - clean[:, 1:]).abs().max().item()
    if bug.in_context_encoding:
        assert first_step_moved > 1e-3, f"{name} does not change context encoding"
    else:
        assert first_step_moved == 0.0, f"{name} changes context encoding too"
        assert later_steps_moved > 1e-3, f"{name} does not change token generation"
    assert torch.equal(logits(runner), clean)  # the patch is gone
