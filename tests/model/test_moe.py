"""The MoE block against HF's own GraniteMoeMoE: same routing, same output, and each step reads only the experts
that were chosen (grouped by expert, never a loop over tokens or over all E)."""

import pytest
import torch
import transformers

from granite_bench.model.backend import moe
from granite_bench.model.backend.step import DecodeStep

H, I, E, K = 32, 24, 6, 2


@pytest.fixture(scope="module")
def pair():
    config = transformers.GraniteMoeConfig(hidden_size=H, intermediate_size=I, num_local_experts=E,
                                           num_experts_per_tok=K, num_attention_heads=4)
    torch.manual_seed(0)
    hf = transformers.models.granitemoe.modeling_granitemoe.GraniteMoeMoE(config)
    with torch.no_grad():
        for param in hf.parameters():
            param.normal_(0, 0.3)
    ours = moe.GraniteMoE(config, torch.float32)
    state = {f"block.{k}": v for k, v in hf.state_dict().items()}
    ours.load_state_dict(moe.convert_moe(state, "block", rank=0, tp=1, ep=1))
    return hf, ours


def test_moe_block_matches_hf_granitemoe_routing_and_output(pair):
    hf, ours = pair
    x = torch.randn(2, 7, H)
    step = DecodeStep(None, None, None, capture=[])
    out = ours(x, step, layer_idx=0)
    torch.testing.assert_close(out, hf(x), rtol=1e-5, atol=1e-6)
    logits, weights, index = hf.router(x.reshape(-1, H))
    (_, logits_name, router_logits), (_, routing_name, routing), _ = step.capture
    assert (logits_name, routing_name) == ("router_logits", "router")
    torch.testing.assert_close(router_logits.reshape(-1, E), logits.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(routing.reshape(-1, E), moe.routing_matrix(weights, index, E))


def test_expert_parallel_ranks_sum_to_the_whole_moe(pair):
    hf, _ = pair
    state = {f"block.{k}": v for k, v in hf.state_dict().items()}
    x = torch.randn(5, H)
    weights, index = hf.router(x)[1:]
    total = torch.zeros_like(x)
    for rank in range(4):   # tp 4 with 2 expert groups: 3 experts each, intermediate split in two
        shard = moe.convert_moe(state, "block", rank=rank, tp=4, ep=2)
        experts = moe.FusedExperts(H, I // 2, E // 2, torch.float32)
        experts.gate_up_proj.data, experts.down_proj.data = shard["experts.gate_up_proj"], shard["experts.down_proj"]
        experts.first_expert = moe.expert_slice(rank, 4, 2, E)[0]
        total += experts(x, weights, index)
    torch.testing.assert_close(total, hf.experts(x, index, weights), rtol=1e-5, atol=1e-6)


def test_a_step_runs_each_chosen_expert_once_and_no_other(pair, monkeypatch):
    _, ours = pair
    calls = []
    original = moe.FusedExperts.expert
    monkeypatch.setattr(moe.FusedExperts, "expert", lambda self, local, x: calls.append((local, len(x))) or
                        original(self, local, x))
    x = torch.randn(1, 1, H)                                  # a decode step at batch 1
    index = ours.router(x.reshape(-1, H))[1]
    ours(x, DecodeStep(None, None, None), layer_idx=0)
    assert sorted(local for local, _ in calls) == sorted(index.flatten().tolist())   # k experts read, not E
    calls.clear()
    x = torch.randn(3, 4, H)                                  # 12 tokens: each distinct expert once, with its tokens
    index = ours.router(x.reshape(-1, H))[1]
    ours(x, DecodeStep(None, None, None), layer_idx=0)
    assert [local for local, _ in calls] == sorted(set(index.flatten().tolist()))
    assert sum(n for _, n in calls) == index.numel()


@pytest.mark.parametrize("tokens", [1, 3, 40])
def test_static_graph_formulations_equal_the_eager_grouped_experts(pair, tokens):
    """Selective loading (decode) and all-experts (prefill), which a static graph uses, compute what the grouped
    eager path does, on a rank that holds only some experts too."""
    _, ours = pair
    x = torch.randn(tokens, H)
    weights, index = ours.router(x)
    experts = ours.experts
    grouped = experts.grouped(x, weights, index)
    torch.testing.assert_close(experts.selected_experts(x, weights, index), grouped, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(experts.all_experts(x, weights, index), grouped, rtol=1e-5, atol=1e-5)
    half = moe.FusedExperts(H, I, E // 2, torch.float32)      # holds experts 3..5 only
    half.first_expert = 3
    half.gate_up_proj.data, half.down_proj.data = experts.gate_up_proj[3:], experts.down_proj[3:]
    torch.testing.assert_close(half.all_experts(x, weights, index), half.grouped(x, weights, index),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(half.selected_experts(x, weights, index), half.grouped(x, weights, index),
                               rtol=1e-5, atol=1e-5)
