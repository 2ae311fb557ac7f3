"""Routing near-ties: a flipped expert choice is accepted only where the reference's own logits are within the
measured router-logit error of making it."""

import torch

from granite_bench.parity.routing import near_tie_at, routing_flip_within_error


def routing(chosen: list[int], experts: int = 4) -> torch.Tensor:
    dense = torch.zeros(experts)
    dense[chosen] = 1.0 / len(chosen)
    return dense


REFERENCE = torch.tensor([2.0, 1.000, 0.998, -1.0])   # experts 1 and 2 are 0.002 apart: a near-tie for top 2


def test_the_same_expert_choice_is_no_flip():
    assert routing_flip_within_error(REFERENCE, REFERENCE + 0.01, routing([0, 1]), routing([0, 1])) is None


def test_a_flip_across_a_gap_the_measured_logit_error_can_close_is_accepted():
    actual = REFERENCE + torch.tensor([0.0, -0.002, 0.002, 0.0])   # moved by 0.002: expert 2 now beats expert 1
    flip = routing_flip_within_error(REFERENCE, actual, routing([0, 1]), routing([0, 2]))
    assert flip["accepted"] and flip["chosen_experts"] == [0, 2] and flip["reference_experts"] == [0, 1]
    assert abs(flip["shortfall"] - 0.002) < 1e-6 and abs(flip["logit_error"] - 0.002) < 1e-6


def test_a_flip_larger_than_twice_the_logit_error_is_a_routing_bug():
    actual = REFERENCE + 0.0005                                      # logits agree to 5e-4 everywhere
    flip = routing_flip_within_error(REFERENCE, actual, routing([0, 1]), routing([0, 3]))   # 3 is 2.0 below
    assert not flip["accepted"] and flip["shortfall"] > 2 * flip["logit_error"]


def test_choosing_fewer_experts_is_never_a_near_tie():
    """top-k off by one keeps the reference's best k - 1 experts: every kept logit beats every dropped one."""
    flip = routing_flip_within_error(REFERENCE, REFERENCE, routing([0, 1]), routing([0]))
    assert not flip["accepted"]


def test_near_tie_needs_the_router_to_be_the_first_failing_block_and_both_logits():
    streams = [(0, "router_logits", REFERENCE), (0, "router", routing([0, 1]))]
    flipped = [(0, "router_logits", REFERENCE + torch.tensor([0.0, -0.002, 0.002, 0.0])), (0, "router", routing([0, 2]))]
    tie = near_tie_at(streams, flipped, {"layer": 0, "sub_block": "router", "rel_err": 0.5})
    assert tie["accepted"] and tie["layer"] == 0
    assert near_tie_at(streams, flipped, {"layer": 0, "sub_block": "experts", "rel_err": 0.5}) is None
    assert near_tie_at(streams, flipped, None) is None
    without_logits = [s for s in streams if s[1] == "router"]
    assert near_tie_at(without_logits, flipped[1:], {"layer": 0, "sub_block": "router", "rel_err": 0.5}) is None
