"""Static KV cache: prefix writes, per-row position writes, reads of the first kv_len slots, reset."""

import pytest
import torch

from granite_bench.model.backend.kv_cache import KVCacheManager

LAYERS, BATCH, KV_HEADS, SEQ, HEAD_DIM = 2, 3, 2, 16, 4


def make_cache(dtype=torch.float32) -> KVCacheManager:
    return KVCacheManager(LAYERS, BATCH, KV_HEADS, SEQ, HEAD_DIM, dtype)


def distinct(length: int, offset: float = 1.0, dtype=torch.float32) -> torch.Tensor:
    """[B, Hkv, length, d], non-zero, every element different in float32 (bf16 rounds values above 256 together; the
    one-position values written below stay distinct in every dtype)."""
    count = BATCH * KV_HEADS * length * HEAD_DIM
    return (torch.arange(count, dtype=torch.float32) + offset).view(BATCH, KV_HEADS, length, HEAD_DIM).to(dtype)


def test_cache_tensors_have_the_static_shape():
    k, v = make_cache().caches(1)
    assert k.shape == v.shape == (BATCH, KV_HEADS, SEQ, HEAD_DIM)


def test_cache_buffers_are_not_in_the_state_dict():
    """Checkpoints never carry the cache, so strict state-dict loading works."""
    assert make_cache().state_dict() == {}


def test_context_encoding_fills_only_the_prefix_of_its_layer():
    cache = make_cache()
    k, v = distinct(5), distinct(5, offset=1000.0)
    cache.update_context_encoding(0, k, v)
    k_cache, v_cache = cache.caches(0)
    assert torch.equal(k_cache[:, :, :5], k)
    assert torch.equal(v_cache[:, :, :5], v)
    assert not k_cache[:, :, 5:].any() and not v_cache[:, :, 5:].any()
    other_k, other_v = cache.caches(1)
    assert not other_k.any() and not other_v.any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_token_generation_writes_at_each_rows_own_position(dtype):
    cache = make_cache(dtype)
    cache.update_context_encoding(0, distinct(8, dtype=dtype), distinct(8, offset=1000.0, dtype=dtype))
    before_k, before_v = (t.clone() for t in cache.caches(0))
    k_new, v_new = -distinct(1, dtype=dtype), -distinct(1, offset=1000.0, dtype=dtype)
    positions = torch.tensor([8, 3, 11])  # rows at different positions
    cache.update_token_generation(0, k_new, v_new, positions)

    expected_k, expected_v = before_k.clone(), before_v.clone()
    for row, position in enumerate(positions.tolist()):
        expected_k[row, :, position] = k_new[row, :, 0]
        expected_v[row, :, position] = v_new[row, :, 0]
    k_cache, v_cache = cache.caches(0)
    assert torch.equal(k_cache, expected_k)
    assert torch.equal(v_cache, expected_v)


def test_read_returns_the_first_kv_len_slots():
    cache = make_cache()
    cache.update_context_encoding(1, distinct(SEQ), distinct(SEQ, offset=1000.0))
    k, v = cache.read(1, 8)
    assert k.shape == v.shape == (BATCH, KV_HEADS, 8, HEAD_DIM)
    assert torch.equal(k, distinct(SEQ)[:, :, :8])
    assert torch.equal(v, distinct(SEQ, offset=1000.0)[:, :, :8])


def test_reset_zeroes_every_layer():
    cache = make_cache()
    for layer in range(LAYERS):
        cache.update_context_encoding(layer, distinct(SEQ), distinct(SEQ))
    cache.reset()
    for layer in range(LAYERS):
        k, v = cache.caches(layer)
        assert not k.any() and not v.any()


def test_kv_bytes_per_layer_kind_of_a_plain_cache_are_every_layer_full_length():
    per_slot = 2 * BATCH * KV_HEADS * HEAD_DIM * 2        # K and V, bf16
    assert make_cache(torch.bfloat16).kv_bytes_per_layer_kind() == {
        "full_attention": {"layers": LAYERS, "slots": SEQ, "bytes_per_slot": per_slot, "bytes": LAYERS * SEQ * per_slot}}


def test_kv_bytes_per_layer_kind_count_only_the_layers_that_hold_kv():
    """A hybrid's Mamba layers hold states, not KV: only its attention layers are counted."""
    from granite_bench.model.backend.mamba import MambaShape
    from granite_bench.model.backend.state_cache import HybridStateCache
    shape = MambaShape(heads=2, head_dim=4, groups=1, state=8, conv_kernel=4, chunk=16)
    cache = HybridStateCache([1], [0, 2], BATCH, KV_HEADS, SEQ, HEAD_DIM, torch.float32, shape)
    per_slot = 2 * BATCH * KV_HEADS * HEAD_DIM * 4
    assert cache.kv_bytes_per_layer_kind() == {
        "full_attention": {"layers": 1, "slots": SEQ, "bytes_per_slot": per_slot, "bytes": SEQ * per_slot}}
