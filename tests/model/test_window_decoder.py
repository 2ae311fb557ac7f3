"""The sliding-window models' converter pieces: sinks sharded with their query heads under TP."""

import torch

from granite_bench.model.backend.head_sharding import plan_heads
from granite_bench.model.backend.window_decoder import convert_sinks


def test_sinks_follow_each_ranks_query_heads_and_padded_heads_get_zero():
    """4 query heads over 1 KV head on 3 ranks: the group splits 2 / 2 / (2 padded heads)."""
    sinks = torch.tensor([1.0, 2.0, 3.0, 4.0])
    plan = plan_heads(4, 1, 3, head_dim=8)
    shards = [convert_sinks({"l.sinks": sinks}, "l", plan, rank)["sinks"] for rank in range(3)]
    assert [s.tolist() for s in shards] == [[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]


def test_sinks_of_grouped_heads_split_by_kv_group():
    sinks = torch.arange(8, dtype=torch.float32)
    plan = plan_heads(8, 2, 2, head_dim=8)
    assert [convert_sinks({"l.sinks": sinks}, "l", plan, r)["sinks"].tolist() for r in range(2)] == [
        [0, 1, 2, 3], [4, 5, 6, 7]]
