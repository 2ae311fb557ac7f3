"""The one greedy loop: early stop on stop tokens, exact length without them, last-position logits in both
layouts, and timing intervals that each hold the work they name."""

from types import SimpleNamespace

import pytest
import torch

from granite_bench.runtime.errors import InputError
from granite_bench.runtime.generation import greedy_generate, last_position_logits

VOCAB = 8


def one_hot(ids: list[int]) -> torch.Tensor:
    """[B, V] logits whose argmax is ids[b]."""
    logits = torch.zeros(len(ids), VOCAB)
    logits[torch.arange(len(ids)), torch.tensor(ids)] = 1.0
    return logits


class ScriptedRunner:
    """Emits script[b][i] as row b's i-th new token; each call advances a fake clock by a known amount."""

    def __init__(self, script: list[list[int]], last_only: bool = True, seq_len: int = 64):
        self.script = script
        self.last_only = last_only
        self.neuron_config = SimpleNamespace(sequence_length=seq_len)
        self.now = 0
        self.decode_positions = []

    def context_encode(self, prompts):
        self.now += 1000
        first = one_hot([row[0] for row in self.script])
        if self.last_only:
            return first[:, None]                                   # [B, 1, V]
        longest = max(len(p) for p in prompts)
        logits = torch.zeros(len(prompts), longest, VOCAB)          # [B, L, V]; garbage except the last real one
        for b, p in enumerate(prompts):
            logits[b, len(p) - 1] = first[b]
        return logits

    def token_generate(self, next_ids, positions):
        step = len(self.decode_positions) + 1
        self.decode_positions.append(positions.tolist())
        self.now += 10 * step
        return one_hot([row[step] for row in self.script])


def test_without_stop_tokens_exactly_max_new_tokens_are_generated():
    runner = ScriptedRunner([[1, 2, 3, 4], [5, 6, 7, 1]])
    result = greedy_generate(runner, [[9, 9], [9, 9, 9]], 4)
    assert result.tokens == [[1, 2, 3, 4], [5, 6, 7, 1]]
    assert result.logits.shape == (2, 4, VOCAB)
    assert runner.decode_positions == [[2, 3], [3, 4], [4, 5]]   # each row continues after its own prompt


def test_generation_stops_once_every_row_has_produced_a_stop_token():
    runner = ScriptedRunner([[1, 0, 3, 3, 3, 3], [5, 6, 0, 3, 3, 3]])
    result = greedy_generate(runner, [[9], [9]], 6, stop_token_ids=[0])
    assert result.tokens == [[1, 0], [5, 6, 0]]                  # each row ends at (and keeps) its stop token
    assert len(runner.decode_positions) == 2                     # not 5: the loop ended when the last row stopped


def test_a_stop_token_in_the_first_position_ends_before_any_decode_step():
    runner = ScriptedRunner([[2, 1], [2, 1]])
    result = greedy_generate(runner, [[9], [9]], 2, stop_token_ids={2})
    assert result.tokens == [[2], [2]] and runner.decode_positions == []


def test_full_and_last_position_context_logits_give_the_same_tokens():
    script = [[1, 2, 3], [4, 5, 6]]
    prompts = [[9, 9, 9], [9]]
    full = greedy_generate(ScriptedRunner(script, last_only=False), prompts, 3).tokens
    assert full == greedy_generate(ScriptedRunner(script, last_only=True), prompts, 3).tokens == script


def test_last_position_logits_picks_each_rows_last_real_position():
    logits = torch.arange(2 * 3 * 1, dtype=torch.float32).view(2, 3, 1)
    assert last_position_logits(logits, torch.tensor([2, 3])).flatten().tolist() == [1.0, 5.0]
    assert last_position_logits(logits[:, :1], torch.tensor([2, 3])).flatten().tolist() == [0.0, 3.0]


def test_timings_put_context_encoding_in_ttft_and_each_decode_call_in_its_own_step():
    runner = ScriptedRunner([[1, 2, 3, 4], [1, 2, 3, 4]])
    result = greedy_generate(runner, [[9], [9]], 4, clock=lambda: runner.now)
    assert result.timings["ttft_ns"] == 1000
    assert result.timings["step_ns"] == [10, 20, 30]
    assert result.timings["e2e_ns"] == 1060


def test_a_prompt_that_cannot_fit_the_new_tokens_is_refused_before_any_call():
    runner = ScriptedRunner([[1] * 8], seq_len=10)
    with pytest.raises(InputError, match="sequence_length 10"):
        greedy_generate(runner, [[9] * 5], 6)
    assert runner.now == 0
