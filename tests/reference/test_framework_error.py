"""HF's own model in a lower dtype against the fp32 goldens: measured once beside the goldens, tied to them, and what
bf16 parity is then judged against (never a corrupt or stale file, never under an explicit --tolerance)."""

import json

import pytest
import torch

from granite_bench.parity.command import calibrate_on_framework
from granite_bench.parity.tolerances import profile_for
from granite_bench.reference.framework_error import (compute_framework_error, framework_file, gap_errors,
                                                     load_framework_error)
from granite_bench.reference.goldens import (GoldenError, compute_goldens, golden_key, load_goldens,
                                             read_golden_index, save_goldens)
from granite_bench.reference.fingerprint import content_fingerprint
from granite_bench.reference.hf_reference import load_reference

PROMPTS = [[5, 9, 33, 120, 7], list(range(40, 63))]


@pytest.fixture(scope="module")
def stored(tiny_model_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("goldens") / "tiny"
    key = golden_key(content_fingerprint(tiny_model_dir), PROMPTS, 6, "eager")
    save_goldens(compute_goldens(load_reference(tiny_model_dir), PROMPTS, 6), key, directory)
    compute_framework_error(tiny_model_dir, directory, "bf16")
    return directory, key


def test_framework_file_holds_hf_bf16_errors_per_position_and_its_own_greedy_tokens(stored):
    directory, key = stored
    doc = load_framework_error(directory, "bfloat16", key)
    assert doc["dtype"] == "bfloat16" and doc["golden_key"] == key
    for prompt, entry in zip(PROMPTS, doc["prompts"]):
        assert len(entry["err_top50"]) == len(entry["gap_err"]) == len(prompt) + 6
        assert len(entry["tokens"]) == 6
    assert 0 < doc["worst"]["err_top50"] < 0.04  # bf16 rounding on two layers: real error, inside the profile
    assert doc["worst"]["err_top50"] == max(max(p["err_top50"]) for p in doc["prompts"])


def test_gap_error_is_the_largest_change_to_the_reference_gap_between_its_top_token_and_another():
    expected = torch.tensor([[3.0, 1.0, 0.0, -5.0]])
    actual = torch.tensor([[3.0, 1.5, -0.25, -5.0]])  # top token unchanged, second +0.5, third -0.25
    assert gap_errors(expected, actual, k=3).tolist() == [0.5]
    assert gap_errors(expected, actual + 7.0, k=4).tolist() == [0.5]  # a constant shift moves no gap


def test_bf16_parity_is_judged_against_the_framework_file_beside_its_goldens(stored):
    directory, _ = stored
    _, goldens = load_goldens(directory)
    said = []
    profile, framework = calibrate_on_framework(profile_for("bf16"), goldens, "bf16", None, said.append)
    assert framework is not None and "framework-bfloat16.json" in said[0]
    assert calibrate_on_framework(profile_for("bf16"), goldens, "bf16", "50:1e-5:0.04", said.append)[1] is None
    assert calibrate_on_framework(profile_for("float32"), goldens, "float32", None, said.append)[1] is None


def test_a_stale_or_corrupt_framework_file_is_refused_in_one_line(stored, tmp_path):
    directory, key = stored
    other = dict(key, num_tokens=99)
    with pytest.raises(GoldenError, match="measured on other goldens"):
        load_framework_error(directory, "bfloat16", other)
    copy = tmp_path / "framework-bfloat16.json"
    copy.write_text("{not json")
    with pytest.raises(GoldenError, match="is corrupt.*--framework-dtype bfloat16"):
        load_framework_error(tmp_path, "bfloat16", key)
    assert load_framework_error(directory, "float16", key) is None  # never measured: nothing to judge against


def test_goldens_recomputed_in_place_drop_the_old_framework_file(stored, tiny_model_dir, tmp_path):
    directory, key = stored
    target = tmp_path / "g"
    _, goldens = load_goldens(directory)
    save_goldens(goldens, key, target)
    (framework_file(target, "bfloat16")).write_text(framework_file(directory, "bfloat16").read_text())
    save_goldens(goldens, key, target)  # recomputed goldens replace the directory whole
    assert not framework_file(target, "bfloat16").exists()
    assert read_golden_index(target)["key"] == key


def test_reference_command_keeps_matching_goldens_and_adds_the_framework_error(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner
    from granite_bench.cli import app
    out = tmp_path / "g"
    first = CliRunner().invoke(app, ["reference", "--model", str(tiny_model_dir), "--num-tokens", "2", "--out",
                                     str(out)])
    assert first.exit_code == 0, first.output
    stamp = (out / "golden.json").stat().st_mtime_ns
    second = CliRunner().invoke(app, ["reference", "--model", str(tiny_model_dir), "--num-tokens", "2", "--out",
                                      str(out), "--framework-dtype", "bfloat16"])
    assert second.exit_code == 0, second.output
    assert "already holds these goldens" in second.output
    assert (out / "golden.json").stat().st_mtime_ns == stamp
    assert json.loads(framework_file(out, "bfloat16").read_text())["dtype"] == "bfloat16"
