"""The Mamba2 mixer against HF's own `GraniteMoeHybridMambaLayer` on random weights: right-padded prefill crossing
chunk boundaries with 2 groups, then recurrent decode steps, each judged against HF's full forward (its chunked
scan) at the same positions."""

import pytest
import torch
from transformers import GraniteMoeHybridConfig
from transformers.models.granitemoehybrid.modeling_granitemoehybrid import GraniteMoeHybridMambaLayer

from granite_bench.model.backend.mamba import MambaMixer, MambaShape, chunked_scan, convert_mamba, recurrent_step
from granite_bench.model.backend.state_cache import HybridStateCache
from granite_bench.model.backend.step import DecodeStep


def tiny_config(**overrides):
    values = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, layer_types=["mamba"],
                  mamba_n_heads=8, mamba_n_groups=2, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2,
                  mamba_chunk_size=8, mamba_conv_bias=True, mamba_proj_bias=False, rms_norm_eps=1e-6)
    values.update(overrides)
    return GraniteMoeHybridConfig(**values)


def hf_mixer(config, seed=0):
    torch.manual_seed(seed)
    layer = GraniteMoeHybridMambaLayer(config, 0).eval()
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name == "A_log":
                p.copy_(torch.log(torch.rand(p.shape) * 3 + 0.5))
            elif name == "dt_bias":
                p.copy_(torch.randn(p.shape) * 0.5 - 1)
            elif name in ("D", "norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape))
            else:
                p.copy_(torch.randn(p.shape) / p.shape[-1] ** 0.5)
    return layer


def our_mixer(layer, config, batch, dtype=torch.float32, ssm_dtype=torch.float32):
    mixer = MambaMixer(config, 0, dtype)
    hf = {f"m.{k}": v for k, v in layer.state_dict().items()}
    mixer.load_state_dict({k: v.to(dtype) for k, v in convert_mamba(hf, "m", config, 0, 1).items()}, strict=True)
    cache = HybridStateCache([], [0], batch, 1, 8, 4, dtype, MambaShape.of(config, 1), ssm_dtype)
    return mixer, cache


def prefill_step(mask):
    return DecodeStep(None, None, None, attention_mask=mask)


def decode_step(batch):
    return DecodeStep(None, None, None, positions=torch.zeros(batch, dtype=torch.long), kv_len=1)


@pytest.mark.parametrize("groups", [1, 2])
@torch.no_grad()
def test_padded_prefill_then_decode_match_hf_full_forward_at_every_position(groups):
    config = tiny_config(mamba_n_groups=groups)
    layer = hf_mixer(config)
    lengths, bucket, steps = [21, 13], 24, 5          # chunk 8: the prompts cross 2 and 1 chunk boundaries
    torch.manual_seed(1)
    full = torch.randn(2, bucket + steps, config.hidden_size)
    mixer, cache = our_mixer(layer, config, batch=2)
    mask = torch.zeros(2, bucket, dtype=torch.long)
    prompt = torch.zeros(2, bucket, config.hidden_size)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        prompt[b, :n] = full[b, :n]
        prompt[b, n:] = 50 * torch.randn(bucket - n, config.hidden_size)   # loud padding: must not leak
    out = mixer(prompt, prefill_step(mask), cache)
    decoded = [mixer(torch.stack([full[b, n + j] for b, n in enumerate(lengths)]).unsqueeze(1), decode_step(2), cache)
               for j in range(steps)]
    for b, n in enumerate(lengths):
        expected = layer(full[b:b + 1, :n + steps])[0]                        # HF: one chunked scan over it all
        torch.testing.assert_close(out[b, :n], expected[:n], rtol=1e-5, atol=1e-5)
        ours = torch.cat([d[b] for d in decoded])
        torch.testing.assert_close(ours, expected[n:], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_chunked_scan_equals_step_by_step_recurrence_and_ignores_zero_dt_positions():
    torch.manual_seed(0)
    b, L, H, P, G, N = 2, 19, 4, 3, 2, 5
    x, dt = torch.randn(b, L, H, P), torch.rand(b, L, H)
    A, B, C = -torch.rand(H) * 2, torch.randn(b, L, G, N), torch.randn(b, L, G, N)
    dt[1, 11:] = 0                                                             # row 1: 11 real positions
    y, final = chunked_scan(x, dt, A, B, C, chunk=4)
    state = torch.zeros(b, H, P, N)
    for t in range(L):
        y_t, state = recurrent_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state)
        torch.testing.assert_close(y[:, t], y_t, rtol=1e-5, atol=1e-5)
        if t == 10:
            after_row1 = state[1].clone()
    torch.testing.assert_close(final, state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final[1], after_row1, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_ssm_state_is_fp32_with_bf16_weights_unless_asked_and_bf16_state_drifts_from_it():
    config = tiny_config()
    layer = hf_mixer(config)
    torch.manual_seed(2)
    x = torch.randn(1, 16, config.hidden_size)
    results = {}
    for ssm_dtype in (torch.float32, torch.bfloat16):
        mixer, cache = our_mixer(layer, config, 1, dtype=torch.bfloat16, ssm_dtype=ssm_dtype)
        assert cache.mamba_states(0)[1].dtype == ssm_dtype
        assert cache.mamba_states(0)[0].dtype == torch.bfloat16
        mixer(x[:, :8].bfloat16(), prefill_step(torch.ones(1, 8, dtype=torch.long)), cache)
        results[ssm_dtype] = torch.cat([mixer(x[:, 8 + j:9 + j].bfloat16(), decode_step(1), cache)
                                        for j in range(8)], dim=1).float()
    expected = layer(x)[:, 8:]
    err32 = (results[torch.float32] - expected).abs().max()
    err16 = (results[torch.bfloat16] - expected).abs().max()
    assert err32 < 0.05 * expected.abs().max()
    assert err16 > err32


def test_state_cache_size_does_not_grow_with_the_sequence_length():
    config = tiny_config()
    shape = MambaShape.of(config, 1)
    short = HybridStateCache([], [0], 2, 1, 64, 4, torch.float32, shape)
    long = HybridStateCache([], [0], 2, 1, 4096, 4, torch.float32, shape)
    per_slot = (shape.conv_channels * 3 + 8 * 8 * 16) * 4
    assert short.state_bytes_per_slot() == long.state_bytes_per_slot() == per_slot
