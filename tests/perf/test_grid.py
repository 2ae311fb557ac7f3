from dataclasses import replace

import pytest

from granite_bench.cli import load_suite
from granite_bench.perf.grid import (GridError, GridSpec, parse_shard, shard_points,
                                     spec_from_suite, with_overrides)
from granite_bench.resources import suite_path


def test_grid_is_the_cross_product_with_runner_groups_adjacent():
    spec = GridSpec(tp=[1, 2], batch_sizes=[1, 4], buckets=[128, 32], compile=[False, True])
    points = spec.points()
    assert len(points) == 2 * 2 * 2 * 2
    groups = [p.runner_group for p in points]
    # each group appears as one contiguous run
    runs = [g for i, g in enumerate(groups) if i == 0 or groups[i - 1] != g]
    assert len(runs) == len(set(groups))
    assert [p.bucket for p in points[:2]] == [32, 128]


def test_point_key_is_stable_and_changes_with_what_is_measured():
    a = GridSpec().points()[0]
    assert a.key == GridSpec().points()[0].key
    assert replace(a, tp=2).key != a.key
    assert replace(a, new_tokens=a.new_tokens + 1).key != a.key
    # the number of rounds does not define the point
    assert GridSpec(rounds=9).points()[0].key == a.key


def test_default_cache_length_is_the_next_power_of_two_holding_bucket_and_new_tokens():
    assert GridSpec(buckets=[32, 128], new_tokens=32).cache_length() == 256
    assert GridSpec(buckets=[96], new_tokens=32).cache_length() == 128
    assert GridSpec(buckets=[32], new_tokens=8, seq_len=48).cache_length() == 48


def test_prompt_fill_sets_prompt_length_within_the_bucket():
    points = GridSpec(buckets=[32, 128], prompt_fill=0.5).points()
    assert [(p.bucket, p.prompt_len) for p in points] == [(32, 16), (128, 64)]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7])
def test_shards_partition_the_grid(count):
    points = GridSpec(tp=[1, 2], batch_sizes=[1, 2, 4], buckets=[16, 32]).points()
    slices = [shard_points(points, i, count) for i in range(1, count + 1)]
    assert [p for s in slices for p in s] == points


@pytest.mark.parametrize("text", ["3", "0/2", "3/2", "a/b", "1/0"])
def test_bad_shard_is_refused(text):
    with pytest.raises(GridError, match="--shard"):
        parse_shard(text)


def test_parse_shard_reads_one_based_index():
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) == (1, 1)


def test_suite_scalars_become_lists_and_unknown_keys_are_refused():
    spec = spec_from_suite({"dtype": "bfloat16", "tp": 2, "compile": True})
    assert spec.dtypes == ["bfloat16"] and spec.tp == [2] and spec.compile == [True]
    with pytest.raises(GridError, match="unknown key 'bucket'"):
        spec_from_suite({"bucket": [32]})


@pytest.mark.parametrize("overrides, message", [
    ({"tp": [0]}, "'tp'"), ({"new_tokens": 1}, "--new-tokens"), ({"dtypes": ["fp8"]}, "--dtype"),
    ({"baselines": ["vllm"]}, "baseline"), ({"seq_len": 64, "buckets": [64]}, "--seq-len"),
])
def test_bad_grid_values_are_refused_in_one_line(overrides, message):
    with pytest.raises(GridError, match=message):
        with_overrides(GridSpec(), **overrides)


def test_command_line_overrides_keep_suite_values_left_as_none():
    spec = with_overrides(GridSpec(batch_sizes=[1, 4]), tp=[8], batch_sizes=None)
    assert spec.tp == [8] and spec.batch_sizes == [1, 4]


@pytest.mark.parametrize("path", sorted(suite_path("perf").glob("*.yaml")), ids=lambda p: p.name)
def test_committed_suites_expand(path):
    assert spec_from_suite(load_suite(path)).points()
