"""Full depth in CI: 40 layers of accumulated error (granite-3.1-2b's depth, stored like a real checkpoint: bf16
safetensors shards with an index) pass fp32 parity, and a wrong last layer is still found.

In bf16, 40 layers of rounding exceed the fixed bf16 profile here as they do at granite-3.1-2b/-8b full depth, for HF's
own bf16 model as much as for the implementation; parity is then judged against HF's own bf16 error on the same
goldens (reference/framework_error.py), and a wrong layer still fails that."""

import json

import pytest
import torch

from granite_bench.parity.check import run_parity_on_goldens
from granite_bench.parity.tolerances import profile_for
from granite_bench.reference.framework_error import compute_framework_error, load_framework_error
from granite_bench.reference.goldens import obtain_goldens, read_golden_index
from granite_bench.reference.weights import resolve_model_dir
from granite_bench.runtime.select import build_runner

PROMPTS = [[5, 9, 33, 120, 7, 64, 900, 17], list(range(40, 63))]


@pytest.fixture(scope="module")
def model_dir():
    return resolve_model_dir("tiny-full-depth")


@pytest.fixture(scope="module")
def goldens(model_dir):
    return obtain_goldens("tiny-full-depth", model_dir, PROMPTS, 6, lambda s: None)


def test_full_depth_preset_is_stored_as_sharded_bf16_safetensors(model_dir):
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((model_dir / s).exists() for s in shards)
    assert json.loads((model_dir / "config.json").read_text())["num_hidden_layers"] == 40
    from safetensors import safe_open
    with safe_open(str(model_dir / shards[0]), framework="pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.bfloat16}


@pytest.mark.parametrize("dtype", ["float32"])
def test_full_depth_parity_passes(goldens, dtype):
    runner = build_runner("tiny-full-depth", dtype=dtype, batch_size=2, seq_len=64, buckets=[32])
    outcome = run_parity_on_goldens(runner, goldens, profile_for(dtype))
    assert outcome.passed, outcome.prompts
    assert len(outcome.positions) == sum(len(p) + 6 for p in PROMPTS)


def test_error_in_the_last_of_40_layers_is_localised_there(goldens):
    runner = build_runner("tiny-full-depth", batch_size=2, seq_len=64, buckets=[32])
    runner.model.layers[39].residual_multiplier = 0.25  # Granite's 0.22 mistyped in the last layer only
    outcome = run_parity_on_goldens(runner, goldens, profile_for("float32"))
    assert not outcome.passed
    assert (outcome.localisation["layer"], outcome.localisation["sub_block"]) == (39, "attention")


@pytest.fixture(scope="module")
def framework_bf16(model_dir, goldens):
    directory = goldens[0].file.parent
    compute_framework_error(model_dir, directory, "bfloat16")
    return load_framework_error(directory, "bfloat16", read_golden_index(directory)["key"])


def test_full_depth_bf16_fails_the_fixed_profile_but_is_no_worse_than_hf_own_bf16(goldens, framework_bf16):
    from granite_bench.parity.tolerances import calibrated
    runner = build_runner("tiny-full-depth", dtype="bfloat16", batch_size=2, seq_len=64, buckets=[32])
    fixed = profile_for("bfloat16")
    assert framework_bf16["worst"]["err_top50"] > fixed.tol_map[50][1]  # HF's own bf16 fails the fixed profile too
    assert not run_parity_on_goldens(runner, goldens, fixed).passed
    judged = calibrated(fixed, framework_bf16["worst"])
    outcome = run_parity_on_goldens(runner, goldens, judged)
    assert outcome.passed, outcome.prompts


def test_a_wrong_layer_at_full_depth_fails_bf16_judged_against_hf_own_bf16(goldens, framework_bf16):
    from granite_bench.parity.tolerances import calibrated
    runner = build_runner("tiny-full-depth", dtype="bfloat16", batch_size=2, seq_len=64, buckets=[32])
    runner.model.layers[20].residual_multiplier = 0.5  # a mistyped multiplier halfway down
    outcome = run_parity_on_goldens(runner, goldens, calibrated(profile_for("bfloat16"), framework_bf16["worst"]))
    assert not outcome.passed
    assert outcome.localisation["layer"] == 20
