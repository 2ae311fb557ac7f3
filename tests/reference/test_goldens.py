"""Goldens: stored reference outputs give parity exactly what the in-process reference gives, are keyed by what made
them, are reused automatically, are never used when they do not match, and never need the reference model."""

import json
import math
import shutil
import types

import pytest
import torch
import transformers

from granite_bench.model.backend.attention import grouped_attention
from granite_bench.parity.check import run_parity, run_parity_on_goldens
from granite_bench.parity.tolerances import profile_for
from granite_bench.reference import goldens as goldens_mod
from granite_bench.reference import hf_reference
from granite_bench.reference.fingerprint import content_fingerprint
from granite_bench.reference.goldens import (GOLDEN_FILE, GoldenError, compute_goldens, explicit_goldens,
                                             golden_key, load_goldens, obtain_goldens, save_goldens)
from granite_bench.runtime.select import build_runner

PROMPTS = [[5, 9, 33, 120, 7], list(range(40, 63)), [300 + 7 * i for i in range(31)]]
NUM_TOKENS = 6


def forbid_reference(monkeypatch):
    """Loading the HF reference model (or any HF Granite weights) fails the test."""
    def refuse(*_a, **_k):
        pytest.fail("the HF reference model was loaded")
    monkeypatch.setattr(hf_reference, "load_reference", refuse)
    monkeypatch.setattr(transformers.GraniteForCausalLM, "from_pretrained", refuse)


@pytest.fixture(scope="module")
def runner(tiny_model_dir):
    return build_runner("tiny-gqa", batch_size=3, seq_len=96, buckets=[16, 32, 64])


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return hf_reference.load_reference(tiny_model_dir)


@pytest.fixture(scope="module")
def stored(tiny_model_dir, reference, tmp_path_factory):
    """A golden directory for PROMPTS, written by save_goldens."""
    directory = tmp_path_factory.mktemp("goldens") / "tiny"
    key = golden_key(content_fingerprint(tiny_model_dir), PROMPTS, NUM_TOKENS, "eager")
    save_goldens(compute_goldens(reference, PROMPTS, NUM_TOKENS), key, directory, {"run_id": "test"})
    return directory, key


def assert_same_outcome(a, b):
    assert a.passed == b.passed
    assert a.reference_tokens == b.reference_tokens
    assert len(a.positions) == len(b.positions)
    for row_a, row_b in zip(a.positions, b.positions):
        assert row_a.keys() == row_b.keys()
        for name, value in row_a.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(row_b[name])
            elif isinstance(value, float):
                assert row_b[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
            else:
                assert row_b[name] == value, name
    assert a.prompts == b.prompts
    assert a.localisation == b.localisation
    assert a.block_errors == b.block_errors


def test_parity_from_stored_goldens_equals_parity_against_the_in_process_reference(runner, reference, stored,
                                                                                   monkeypatch):
    profile = profile_for("float32")
    in_process = run_parity(runner, reference, PROMPTS, NUM_TOKENS, profile)
    forbid_reference(monkeypatch)
    _, goldens = load_goldens(stored[0])
    from_goldens = run_parity_on_goldens(runner, goldens, profile)
    assert in_process.passed
    assert_same_outcome(in_process, from_goldens)


def test_broken_implementation_fails_with_the_same_localisation_from_goldens(runner, reference, stored):
    attn = runner.model.layers[1].self_attn
    wrong_scale = 1 / math.sqrt(attn.layout.head_dim)
    attn.prefill_attention = types.MethodType(lambda self, q, k, v, mask: grouped_attention(q, k, v, mask,
                                                                                            wrong_scale), attn)
    try:
        profile = profile_for("float32")
        in_process = run_parity(runner, reference, PROMPTS, NUM_TOKENS, profile)
        from_goldens = run_parity_on_goldens(runner, load_goldens(stored[0])[1], profile)
    finally:
        del attn.prefill_attention
    assert not in_process.passed
    assert (in_process.localisation["layer"], in_process.localisation["sub_block"]) == (1, "attention")
    assert_same_outcome(in_process, from_goldens)


def test_golden_files_hold_prompt_ids_tokens_logits_and_every_residual_stream(stored, tiny_model_dir):
    directory, key = stored
    doc = json.loads((directory / GOLDEN_FILE).read_text())
    assert doc["key"] == key and doc["run"]["run_id"] == "test"
    _, goldens = load_goldens(directory)
    assert [g.prompt for g in goldens] == PROMPTS
    for g in goldens:
        assert len(g.tokens) == NUM_TOKENS and g.logits.dtype == torch.float32
        assert g.logits.shape == (len(g.prompt) + NUM_TOKENS, 4096)
        assert g.hidden is None  # read on demand, only for localisation
        hidden = g.residual_streams()
        assert [(layer, sub) for layer, sub, _ in hidden] == [(i, s) for i in range(4) for s in ("attention", "mlp")]
        assert all(h.shape == (len(g.prompt) + NUM_TOKENS, 128) for _, _, h in hidden)


def test_automatic_reuse_skips_the_reference_and_a_mismatched_cache_is_recomputed_with_the_reason(
        tiny_model_dir, monkeypatch, granite_cache):
    said = []
    first = obtain_goldens("tiny-gqa", tiny_model_dir, PROMPTS[:1], 3, said.append)
    assert any("computed by the HF reference" in s for s in said)
    cache_dirs = list((granite_cache / "goldens").glob("*/" + GOLDEN_FILE))
    assert cache_dirs

    with monkeypatch.context() as patch:
        forbid_reference(patch)
        said.clear()
        again = obtain_goldens("tiny-gqa", tiny_model_dir, PROMPTS[:1], 3, said.append)
    assert any("reused" in s for s in said)
    assert torch.equal(again[0].logits, first[0].logits) and again[0].tokens == first[0].tokens

    # a golden made by another transformers version is stale: said, then recomputed (never used silently)
    index = next(p for p in cache_dirs if json.loads(p.read_text())["key"]["num_tokens"] == 3)
    doc = json.loads(index.read_text())
    doc["key"]["transformers_version"] = "0.0.1"
    index.write_text(json.dumps(doc))
    said.clear()
    obtain_goldens("tiny-gqa", tiny_model_dir, PROMPTS[:1], 3, said.append)
    assert any("not used" in s and "transformers version 0.0.1" in s for s in said), said
    assert json.loads(index.read_text())["key"]["transformers_version"] != "0.0.1"


def test_goldens_for_another_checkpoint_prompts_or_length_are_refused(stored, tiny_model_dir):
    directory, key = stored
    fingerprint = key["checkpoint_fingerprint"]
    cases = {"another checkpoint": golden_key("0" * 64, PROMPTS, NUM_TOKENS, "eager"),
             "other prompts": golden_key(fingerprint, PROMPTS[:2], NUM_TOKENS, "eager"),
             "another number of tokens": golden_key(fingerprint, PROMPTS, NUM_TOKENS + 1, "eager")}
    for what, wanted in cases.items():
        with pytest.raises(GoldenError, match=what):
            explicit_goldens(directory, wanted, lambda s: None)
    said = []
    assert len(explicit_goldens(directory, {**key, "transformers_version": "9.9"}, said.append)) == len(PROMPTS)
    assert said and "transformers version" in said[0]


def test_missing_or_corrupt_goldens_are_refused_in_one_line(stored, tmp_path):
    directory, key = stored
    with pytest.raises(GoldenError, match="does not exist"):
        load_goldens(tmp_path / "nowhere")
    with pytest.raises(GoldenError, match="holds no golden.json"):
        load_goldens(tmp_path)
    broken = tmp_path / "copy"
    shutil.copytree(directory, broken)
    (broken / "prompt-00001.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(GoldenError, match="prompt-00001.safetensors is corrupt"):
        load_goldens(broken)
    (broken / "prompt-00001.safetensors").unlink()
    with pytest.raises(GoldenError, match="missing"):
        load_goldens(broken)
    (broken / GOLDEN_FILE).write_text("{not json")
    with pytest.raises(GoldenError, match="corrupt"):
        load_goldens(broken)
    for error in (GoldenError("a"),):
        assert "\n" not in str(error)


def test_fingerprint_follows_content_not_path_or_time(tiny_model_dir, tmp_path):
    copy = tmp_path / "clone"
    shutil.copytree(tiny_model_dir, copy)
    for path in copy.iterdir():
        path.touch()
    assert content_fingerprint(copy) == content_fingerprint(tiny_model_dir)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # the last byte of the last tensor: inside a sampled range
    weights.write_bytes(bytes(data))
    assert content_fingerprint(copy) != content_fingerprint(tiny_model_dir)


def test_goldens_copied_with_the_checkpoint_to_another_place_are_used_there(stored, tiny_model_dir, tmp_path,
                                                                             monkeypatch):
    """Another clone / machine: same checkpoint files at another path, goldens copied over."""
    directory, _ = stored
    other_checkpoint, other_goldens = tmp_path / "ckpt", tmp_path / "goldens"
    shutil.copytree(tiny_model_dir, other_checkpoint)
    shutil.copytree(directory, other_goldens)
    forbid_reference(monkeypatch)
    said = []
    got = obtain_goldens(str(other_checkpoint), other_checkpoint, PROMPTS, NUM_TOKENS, said.append,
                         goldens_dir=other_goldens)
    assert [g.prompt for g in got] == PROMPTS and "reference model not loaded" in said[-1]


def test_save_goldens_replaces_an_older_directory_whole(stored, tmp_path):
    directory, key = stored
    target = tmp_path / "g"
    _, goldens = load_goldens(directory)
    save_goldens(goldens, key, target)
    save_goldens(goldens[:1], golden_key(key["checkpoint_fingerprint"], PROMPTS[:1], NUM_TOKENS, "eager"), target)
    assert sorted(p.name for p in target.iterdir()) == [GOLDEN_FILE, "prompt-00000.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["g"]  # no temp folders left behind
    assert len(load_goldens(target)[1]) == 1


def test_goldens_module_does_not_need_the_reference_to_read(monkeypatch, stored):
    forbid_reference(monkeypatch)
    assert goldens_mod.load_goldens(stored[0])[0] == stored[1]
