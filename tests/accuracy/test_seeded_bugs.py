"""The canary's accuracy means something: through the implementation it is far above chance, and a seeded bug
in the model code (monkeypatched at its seams) drops it well below."""

import logging

import lm_eval
import pytest
import torch

from granite_bench.accuracy.lm_adapter import GraniteRunnerLM
from granite_bench.accuracy.tasks import load_tasks, task_manager
from granite_bench.model import rope
from granite_bench.model.attention import GraniteAttention, grouped_attention
from granite_bench.model.kv_cache import KVCacheManager
from granite_bench.runtime.select import build_runner


logging.getLogger("lm_eval").setLevel(logging.ERROR)
LIMIT = {"canary_recall": 60, "canary_copy": 40, "canary_text": 30}
METRIC = {"canary_recall": "acc,none", "canary_copy": "exact_match,strip", "canary_text": "word_perplexity,none"}


@pytest.fixture(scope="module")
def runner():
    return build_runner("canary", dtype="float32", batch_size=8, seq_len=128)


def score(runner, task: str) -> float:
    runner.reset()
    results = lm_eval.simple_evaluate(model=GraniteRunnerLM(runner), tasks=load_tasks([task]).tasks,
                                      task_manager=task_manager(), limit=LIMIT[task], bootstrap_iters=0,
                                      log_samples=False)
    return results["results"][task][METRIC[task]]


# -- the bugs: each one a plausible porting mistake, patched where the model keeps that concern -------------

def sqrt_head_dim_scale(monkeypatch):
    """q·k scaled by 1/sqrt(head_dim), as in Llama, instead of Granite's attention_multiplier."""
    def prefill(self, q, k, v, mask):
        return grouped_attention(q, k, v, mask, self.layout.head_dim ** -0.5)

    def decode(self, q, k_cache, v_cache, mask):
        return grouped_attention(q, k_cache, v_cache, mask, self.layout.head_dim ** -0.5)

    monkeypatch.setattr(GraniteAttention, "prefill_attention", prefill)
    monkeypatch.setattr(GraniteAttention, "decode_attention", decode)


def interleaved_rope(monkeypatch):
    """RoPE rotating adjacent pairs (GPT-J layout) on tables built for halves (GPT-NeoX/HF layout)."""
    def rotate_pairs(x):
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((-x2, x1), dim=-1).flatten(-2)

    monkeypatch.setattr(rope, "rotate_half", rotate_pairs)


def decode_rope_position_off_by_one(monkeypatch):
    """Token generation rotates q/k for position p + 1: the new token looks one step further away."""
    original = rope.RotaryEmbedding.forward

    def forward(self, position_ids):
        if position_ids.shape[-1] == 1:  # the decode step
            position_ids = position_ids + 1
        return original(self, position_ids)

    monkeypatch.setattr(rope.RotaryEmbedding, "forward", forward)


def kv_cache_written_one_slot_early(monkeypatch):
    """Token generation writes its k/v at position p - 1, over the previous token's."""
    original = KVCacheManager.update_token_generation

    def update(self, layer_idx, k, v, positions):
        return original(self, layer_idx, k, v, (positions - 1).clamp(min=0))

    monkeypatch.setattr(KVCacheManager, "update_token_generation", update)


# bug -> whether it is in context encoding too (then recall and perplexity suffer as well as generation)
BUGS = {
    "sqrt_head_dim_scale": (sqrt_head_dim_scale, True),
    "interleaved_rope": (interleaved_rope, True),
    "decode_rope_position_off_by_one": (decode_rope_position_off_by_one, False),
    "kv_cache_written_one_slot_early": (kv_cache_written_one_slot_early, False),
}


@pytest.fixture(scope="module")
def clean_scores(runner):
    return {task: score(runner, task) for task in LIMIT}


def test_canary_is_far_above_chance_through_the_implementation(clean_scores):
    assert clean_scores["canary_recall"] >= 0.9   # 10 choices
    assert clean_scores["canary_copy"] >= 0.8     # exact match of 5-12 random letters
    assert clean_scores["canary_text"] < 8.0      # word perplexity of held-out stories


@pytest.mark.parametrize("bug", list(BUGS))
def test_a_seeded_bug_drops_accuracy_well_below(bug, runner, clean_scores, monkeypatch):
    patch, in_context_encoding = BUGS[bug]
    patch(monkeypatch)
    copy = score(runner, "canary_copy")
    assert copy <= 0.3, f"{bug}: copy exact match {copy:.2f} (clean {clean_scores['canary_copy']:.2f})"
    if in_context_encoding:
        recall = score(runner, "canary_recall")
        assert recall <= clean_scores["canary_recall"] - 0.3, f"{bug}: recall {recall:.2f}"
        assert score(runner, "canary_text") >= 2 * clean_scores["canary_text"]
