"""GQA head placement over TP ranks (grouped, replicated KV with padded query groups, MHA with padding), the
one-line refusals of unusable TP degrees, and TP logits equal to HF on shapes only those rules can shard."""

import pytest
import torch
from transformers import GraniteConfig

from granite_bench.model.config import NeuronConfig
from granite_bench.model.backend.head_sharding import (MAX_TP_DEGREE, TPDegreeError, gathered_head_order, plan_heads,
                                                       validate_tp_degree)
from granite_bench.reference.hf_reference import load_reference
from granite_bench.reference.weights import DEFAULT_INIT, create_random_checkpoint
from granite_bench.runtime.select import build_runner

SHAPES = [(8, 2, 2), (8, 2, 4), (8, 2, 8), (8, 1, 4), (8, 4, 8), (32, 8, 4), (32, 8, 16), (40, 8, 16),
          (12, 4, 8), (12, 3, 2), (12, 3, 4), (40, 8, 3), (40, 8, 6), (6, 6, 4)]


def kv_of(num_q: int, num_kv: int, q_head: int) -> int:
    return q_head // (num_q // num_kv)


@pytest.mark.parametrize("num_q, num_kv, tp", SHAPES)
def test_every_query_head_sits_on_exactly_one_rank_next_to_its_own_kv_head(num_q, num_kv, tp):
    plan = plan_heads(num_q, num_kv, tp, head_dim=16)
    placed = [h for heads in plan.q_heads for h in heads if h is not None]
    assert sorted(placed) == list(range(num_q))
    groups = plan.q_heads_per_rank // plan.kv_heads_per_rank
    for q_heads, kv_heads in zip(plan.q_heads, plan.kv_heads):
        for slot, head in enumerate(q_heads):
            if head is not None:  # the attention kernel pairs query slot i with KV slot i // groups
                assert kv_heads[slot // groups] == kv_of(num_q, num_kv, head)


@pytest.mark.parametrize("num_q, num_kv, tp", SHAPES)
def test_every_rank_has_the_same_head_counts(num_q, num_kv, tp):
    plan = plan_heads(num_q, num_kv, tp, head_dim=16)
    assert len(plan.q_heads) == len(plan.kv_heads) == tp
    assert {len(h) for h in plan.q_heads} == {plan.q_heads_per_rank}
    assert {len(h) for h in plan.kv_heads} == {plan.kv_heads_per_rank}
    assert plan.q_heads_per_rank % plan.kv_heads_per_rank == 0


def test_kv_heads_divisible_by_tp_keep_whole_groups_without_copies():
    plan = plan_heads(8, 4, 2, head_dim=16)
    assert plan.strategy == "grouped"
    assert plan.kv_heads == [[0, 1], [2, 3]]
    assert plan.q_heads == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_fewer_kv_heads_than_ranks_replicates_each_kv_head_and_splits_its_group():
    plan = plan_heads(8, 2, 8, head_dim=16)
    assert plan.strategy == "replicate_kv"
    assert plan.kv_heads == [[0]] * 4 + [[1]] * 4
    assert plan.q_heads == [[h] for h in range(8)]


def test_a_group_that_does_not_split_evenly_is_padded_with_empty_query_heads():
    plan = plan_heads(12, 4, 8, head_dim=16)  # groups of 3 query heads over 2 ranks each
    assert plan.strategy == "replicate_kv"
    assert plan.q_heads[:2] == [[0, 1], [2, None]]
    assert sum(h is None for heads in plan.q_heads for h in heads) == 4


def test_tp_that_neither_divides_nor_is_divided_by_the_kv_heads_becomes_padded_mha():
    plan = plan_heads(12, 3, 8, head_dim=16)
    assert plan.strategy == "mha"
    assert plan.q_heads_per_rank == plan.kv_heads_per_rank == 2
    assert plan.q_heads[-2:] == [[None, None], [None, None]]  # 12 heads padded to 16


@pytest.mark.parametrize("tp, message", [
    (0, "must be a positive integer"), (-2, "must be a positive integer"), (True, "must be a positive integer"),
    (2.0, "must be a positive integer"), (MAX_TP_DEGREE * 2, "above the supported maximum"),
    (16, "exceeds the 8 attention heads"),
])
def test_unusable_tp_degrees_are_refused_in_one_line(tp, message):
    with pytest.raises(TPDegreeError, match=message) as info:
        validate_tp_degree(8, 2, tp)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("num_q, num_kv, message", [(8, 3, "not a multiple of 3 KV heads"),
                                                    (8, 0, "must be positive")])
def test_malformed_head_counts_are_refused(num_q, num_kv, message):
    with pytest.raises(TPDegreeError, match=message):
        validate_tp_degree(num_q, num_kv, 2)


def odd_head_checkpoint(path, num_q: int, num_kv: int):
    config = GraniteConfig(vocab_size=512, hidden_size=192, intermediate_size=384, num_hidden_layers=2,
                           num_attention_heads=num_q, num_key_value_heads=num_kv, attention_multiplier=0.0625,
                           max_position_embeddings=256, embedding_multiplier=12.0, residual_multiplier=0.22,
                           logits_scaling=8.0, tie_word_embeddings=True, pad_token_id=0)
    return create_random_checkpoint(config, dict(DEFAULT_INIT), path, "float32")


@pytest.mark.parametrize("num_q, num_kv, tp, strategy", [(12, 3, 2, "mha"), (12, 4, 8, "replicate_kv")])
def test_tp_logits_equal_hf_on_shapes_that_need_padding_or_mha(tmp_path, num_q, num_kv, tp, strategy):
    model_dir = odd_head_checkpoint(tmp_path / f"q{num_q}-kv{num_kv}", num_q, num_kv)
    assert plan_heads(num_q, num_kv, tp, 16).strategy == strategy
    config = NeuronConfig(batch_size=1, sequence_length=32, tp_degree=tp, context_encoding_buckets=[32],
                          token_generation_buckets=[32])
    prompt = torch.randint(3, 512, (20,), generator=torch.Generator().manual_seed(1)).tolist()
    runner = build_runner(str(model_dir), neuron_config=config)
    try:
        actual = runner.context_encode([prompt])[0]
    finally:
        runner.close()
    expected = load_reference(model_dir)(torch.tensor([prompt])).logits[0]
    assert expected.std() > 1.0  # a realistic spread, so a wrong head placement would show
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("num_q, num_kv, tp", [(8, 2, 2), (6, 2, 4), (6, 3, 4), (4, 1, 4)])
def test_gathered_head_order_puts_every_ranks_heads_back_in_hf_order_without_padding(num_q, num_kv, tp):
    plan = plan_heads(num_q, num_kv, tp, head_dim=16)
    held = [head for rank in plan.q_heads for head in rank]            # what a gather over the ranks concatenates
    assert [held[i] for i in gathered_head_order(plan)] == list(range(num_q))
