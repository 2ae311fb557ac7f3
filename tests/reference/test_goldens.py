"""Goldens: stored reference outputs give parity exactly what the in-process reference gives, are keyed by what made
them, are reused automatically, are never used when they do not match, and never need the reference model."""

import json
import math
import shutil
import types
from pathlib import Path

import pytest
import torch
import transformers

from granite_bench.model.backend.attention import grouped_attention
from granite_bench.parity.check import run_parity, run_parity_on_goldens
from granite_bench.parity.tolerances import profile_for
from granite_bench.reference import golden_files
from granite_bench.reference import goldens as goldens_mod
from granite_bench.reference import hf_reference
from granite_bench.reference.fingerprint import content_fingerprint
from granite_bench.reference.goldens import (GOLDEN_FILE, GoldenError, compute_goldens, explicit_goldens,
                                             golden_key, load_goldens, obtain_goldens, save_goldens)
from granite_bench.runtime.select import build_runner

PROMPTS = [[5, 9, 33, 120, 7], list(range(40, 63)), [300 + 7 * i for i in range(31)]]
NUM_TOKENS = 6


def redigest(directory):
    """Re-write digests.json over the files as they are now (a set edited by someone who also updated its digests,
    or an older set written with other content): only the checks beyond the digests can catch what was changed."""
    doc = json.loads((directory / GOLDEN_FILE).read_text())
    golden_files.write_digests(directory, [GOLDEN_FILE] + [e["file"] for e in doc["prompts"]])


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
    redigest(index.parent)
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
    with pytest.raises(GoldenError, match="prompt-00001.safetensors does not match its sha256"):
        load_goldens(broken)
    redigest(broken)
    with pytest.raises(GoldenError, match="corrupt goldens: .*prompt-00001.safetensors cannot be read"):
        load_goldens(broken)
    (broken / "prompt-00001.safetensors").unlink()
    with pytest.raises(GoldenError, match="corrupt goldens: .*prompt-00001.safetensors is missing"):
        load_goldens(broken)
    (broken / GOLDEN_FILE).write_text("{not json")
    with pytest.raises(GoldenError, match="corrupt goldens: .*golden.json does not match"):
        load_goldens(broken)
    redigest_files = {GOLDEN_FILE: golden_files.file_sha256(broken / GOLDEN_FILE)}
    golden_files.write_digests(broken, list(redigest_files))
    with pytest.raises(GoldenError, match="corrupt goldens: .*golden.json is not a golden index"):
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
    assert sorted(p.name for p in target.iterdir()) == [golden_files.DIGEST_FILE, GOLDEN_FILE,
                                                        "prompt-00000.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["g"]  # no temp folders left behind
    assert len(load_goldens(target)[1]) == 1


def test_goldens_module_does_not_need_the_reference_to_read(monkeypatch, stored):
    forbid_reference(monkeypatch)
    assert goldens_mod.load_goldens(stored[0])[0] == stored[1]


# -- goldens that prove themselves -----------------------------------------------------------------------------------
def edit_prompt_file(path, edit):
    """Rewrite one prompt file with `edit` applied to its tensors (a valid safetensors file with other content)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata=metadata)


def flip_logit_bytes(path):
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    begin, end = json.loads(data[8:8 + header])["logits"]["data_offsets"]
    middle = 8 + header + (begin + end) // 2
    for i in range(middle, middle + 64):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def test_every_golden_file_has_a_digest_and_the_set_one_written_last(stored):
    directory, _ = stored
    doc = json.loads((directory / golden_files.DIGEST_FILE).read_text())
    names = [GOLDEN_FILE] + [f"prompt-{i:05d}.safetensors" for i in range(len(PROMPTS))]
    assert sorted(doc["files"]) == sorted(names)
    assert all(doc["files"][n] == golden_files.file_sha256(directory / n) for n in names)
    assert doc["set"] == golden_files.set_sha256(doc["files"])
    newest = max((directory / n).stat().st_mtime_ns for n in names)
    assert (directory / golden_files.DIGEST_FILE).stat().st_mtime_ns >= newest


@pytest.mark.parametrize("damage, named", [
    ("flipped logit bytes", "prompt-00000.safetensors does not match its sha256"),
    ("nan logit", "prompt-00000.safetensors does not match its sha256"),
    ("edited greedy token", "prompt-00000.safetensors does not match its sha256"),
    ("nan logit, digests rewritten", "prompt-00000.safetensors: 1 of its logits are NaN"),
    ("edited greedy token, digests rewritten", "prompt-00000.safetensors: greedy token 1"),
    ("edited golden.json", "golden.json does not match its sha256"),
    ("edited set digest", "digests.json is not a valid digest table"),
])
def test_damaged_goldens_are_named_as_corrupt_goldens(stored, tmp_path, damage, named):
    directory, _ = stored
    broken = tmp_path / "g"
    shutil.copytree(directory, broken)
    prompt = broken / "prompt-00000.safetensors"
    if damage.startswith("flipped"):
        flip_logit_bytes(prompt)
    elif damage.startswith("nan"):
        edit_prompt_file(prompt, lambda t: t["logits"].__setitem__((3, 7), float("nan")))
    elif damage.startswith("edited greedy"):
        edit_prompt_file(prompt, lambda t: t["tokens"].__setitem__(1, (int(t["tokens"][1]) + 1) % 4096))
    elif damage == "edited golden.json":
        (broken / GOLDEN_FILE).write_text((broken / GOLDEN_FILE).read_text().replace('"run_id": "test"',
                                                                                      '"run_id": "tset"'))
    else:
        doc = json.loads((broken / golden_files.DIGEST_FILE).read_text())
        doc["files"][GOLDEN_FILE] = "0" * 64
        (broken / golden_files.DIGEST_FILE).write_text(json.dumps(doc))
    if damage.endswith("digests rewritten"):
        redigest(broken)
    with pytest.raises(GoldenError, match=f"^corrupt goldens: .*{named}") as err:
        load_goldens(broken)
    assert "\n" not in str(err.value) and "granite-bench reference --out" in str(err.value)


def test_a_golden_set_with_no_prompts_or_disagreeing_with_its_key_is_refused(stored, tmp_path):
    directory, _ = stored
    for name, edit, says in (
            ("empty", lambda doc: doc.__setitem__("prompts", []), "lists no prompts"),
            ("count", lambda doc: doc["key"].__setitem__("num_prompts", 2), "lists 3 prompts but its key says 2"),
            ("prompts", lambda doc: doc["key"].__setitem__("prompts_sha256", "0" * 64),
             "do not match the prompts of its key"),
            ("tokens", lambda doc: doc["key"].__setitem__("num_tokens", NUM_TOKENS + 1),
             "token count differs")):
        broken = tmp_path / name
        shutil.copytree(directory, broken)
        doc = json.loads((broken / GOLDEN_FILE).read_text())
        edit(doc)
        (broken / GOLDEN_FILE).write_text(json.dumps(doc))
        redigest(broken)
        with pytest.raises(GoldenError, match=f"corrupt goldens: .*{says}"):
            load_goldens(broken)


def test_goldens_without_digests_are_refused_when_named_and_recomputed_in_the_cache(stored, tmp_path,
                                                                                      tiny_model_dir, granite_cache):
    directory, key = stored
    old = tmp_path / "old"
    shutil.copytree(directory, old)
    (old / golden_files.DIGEST_FILE).unlink()
    with pytest.raises(GoldenError, match="carry no digests.json .* re-create it with `granite-bench reference"):
        explicit_goldens(old, key, lambda s: None)
    said = []
    first = obtain_goldens("tiny-gqa", tiny_model_dir, PROMPTS[:1], 2, said.append)
    cache = next(p.parent for p in (granite_cache / "goldens").glob("*/" + GOLDEN_FILE)
                 if json.loads(p.read_text())["key"]["num_tokens"] == 2)
    (cache / golden_files.DIGEST_FILE).unlink()
    said.clear()
    again = obtain_goldens("tiny-gqa", tiny_model_dir, PROMPTS[:1], 2, said.append)
    assert any("not used" in s and "carry no digests.json" in s for s in said), said
    assert any("computed by the HF reference" in s for s in said)
    assert (cache / golden_files.DIGEST_FILE).exists() and again[0].tokens == first[0].tokens


def test_writing_goldens_never_deletes_what_it_did_not_write(stored, tmp_path, monkeypatch):
    directory, key = stored
    _, goldens = load_goldens(directory)
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("keep me")
    with pytest.raises(GoldenError, match="is not empty and holds no goldens \\(notes.txt\\)"):
        save_goldens(goldens, key, users)
    assert (users / "notes.txt").read_text() == "keep me" and [p.name for p in users.iterdir()] == ["notes.txt"]

    mixed = tmp_path / "mixed"
    save_goldens(goldens, key, mixed)
    (mixed / "results.csv").write_text("keep me too")
    with pytest.raises(GoldenError, match="files granite-bench did not write there \\(results.csv\\)"):
        save_goldens(goldens, key, mixed)
    assert (mixed / "results.csv").exists()

    monkeypatch.chdir(mixed)
    with pytest.raises(GoldenError, match="--out . is the folder this command runs in"):
        golden_files.check_goldens_target(Path("."))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "mixed"]   # no `.-old-*` or temp folder left


def test_replacing_goldens_swaps_the_folder_whole_and_leaves_nothing_behind(stored, tmp_path):
    directory, key = stored
    _, goldens = load_goldens(directory)
    target = tmp_path / "g"
    save_goldens(goldens, key, target)
    inode = target.stat().st_ino
    key_one = golden_key(key["checkpoint_fingerprint"], PROMPTS[:1], NUM_TOKENS, "eager")
    save_goldens(goldens[:1], key_one, target)
    assert target.stat().st_ino != inode   # a new folder put in place, not the old one edited file by file
    assert [p.name for p in tmp_path.iterdir()] == ["g"]
    assert load_goldens(target)[0] == key_one


def test_cli_parity_refuses_corrupt_goldens_in_one_line_before_torch_and_stores_nothing(stored, tmp_path):
    """Run as a user would: exit 2, one line naming the file, no results, and torch never imported."""
    import subprocess
    import sys
    directory, _ = stored
    broken = tmp_path / "g"
    shutil.copytree(directory, broken)
    flip_logit_bytes(broken / "prompt-00001.safetensors")
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(PROMPTS))
    probe = ("import sys, runpy; sys.argv = ['granite-bench'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('granite_bench.cli', run_name='__main__')\n"
             "finally:\n    print('torch imported' if 'torch' in sys.modules else 'torch not imported', file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe, "parity", "--model", "tiny-gqa", "--prompts", str(prompts),
                           "--num-tokens", str(NUM_TOKENS), "--goldens", str(broken), "--results-dir",
                           str(tmp_path / "results")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error: corrupt goldens: ") and "prompt-00001.safetensors" in lines[0]
    assert lines[-1] == "torch not imported" and len(lines) == 2
    assert not (tmp_path / "results").exists()


def test_replacing_goldens_without_an_atomic_exchange_keeps_the_old_set_when_the_rename_fails(stored, tmp_path,
                                                                                               monkeypatch):
    directory, key = stored
    _, goldens = load_goldens(directory)
    target = tmp_path / "g"
    save_goldens(goldens, key, target)
    before = golden_files.file_sha256(target / GOLDEN_FILE)
    monkeypatch.setattr(golden_files, "_rename_exchange", lambda: None)
    real_replace = golden_files.os.replace

    def fail_into_place(src, dst):
        if Path(dst) == target and not Path(src).name.endswith("-old"):   # the new set into place, not the way back
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)
    monkeypatch.setattr(golden_files.os, "replace", fail_into_place)
    key_one = golden_key(key["checkpoint_fingerprint"], PROMPTS[:1], NUM_TOKENS, "eager")
    with pytest.raises(OSError):
        save_goldens(goldens[:1], key_one, target)
    monkeypatch.undo()
    assert golden_files.file_sha256(target / GOLDEN_FILE) == before and load_goldens(target)[0] == key
    assert [p.name for p in tmp_path.iterdir()] == ["g"]
