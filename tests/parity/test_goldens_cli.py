"""`granite-bench reference` then `granite-bench parity --goldens`, from the command line: the reference model is
never loaded by parity, and every bad input is one line, exit 2, nothing written."""

import json
import shutil

import pytest
import transformers
from typer.testing import CliRunner

from granite_bench.cli import app
from granite_bench.reference import hf_reference

FAST = ["--batch-size", "2", "--seq-len", "96", "--buckets", "16,32,64", "--num-tokens", "4"]


def invoke(*args):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.yaml"
    path.write_text("prompts:\n  - 'hello granite'\n  - [5, 6, 7, 8, 9, 10, 11]\n")
    return path


@pytest.fixture(scope="module")
def golden_dir(tmp_path_factory, prompts_file):
    out = tmp_path_factory.mktemp("g") / "tiny-gqa-goldens"
    result = invoke("reference", "--prompts", str(prompts_file), "--num-tokens", "4", "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def refuse_reference(monkeypatch):
    def refuse(*_a, **_k):
        pytest.fail("the HF reference model was loaded")
    monkeypatch.setattr(hf_reference, "load_reference", refuse)
    monkeypatch.setattr(transformers.GraniteForCausalLM, "from_pretrained", refuse)


def assert_one_line_exit_two(result, message, *not_written):
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert result.output.strip().splitlines()[-1] == errors[0]  # one line, and nothing after it (no traceback)
    for path in not_written:
        assert not path.exists(), path


def test_parity_with_goldens_passes_without_loading_the_reference(golden_dir, prompts_file, tmp_path,
                                                                  monkeypatch):
    refuse_reference(monkeypatch)
    result = invoke("parity", *FAST, "--prompts", str(prompts_file), "--goldens", str(golden_dir),
                    "--results-dir", str(tmp_path / "res"))
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "reference model not loaded" in result.output


def test_parity_with_goldens_still_fails_a_broken_implementation(golden_dir, prompts_file, tmp_path, monkeypatch):
    from granite_bench.model import modeling_granite
    original = modeling_granite.GraniteDecoderLayer.__init__

    def broken_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.residual_multiplier = 1.0

    monkeypatch.setattr(modeling_granite.GraniteDecoderLayer, "__init__", broken_init)
    refuse_reference(monkeypatch)
    result = invoke("parity", *FAST, "--prompts", str(prompts_file), "--goldens", str(golden_dir), "--no-save")
    assert result.exit_code == 1, result.output
    assert "layer 0 attention" in result.output


def test_goldens_for_another_checkpoint_or_prompts_are_refused(golden_dir, prompts_file, tmp_path):
    res = tmp_path / "res"
    result = invoke("parity", *FAST, "--model", "tiny-mqa", "--prompts", str(prompts_file), "--goldens",
                    str(golden_dir), "--results-dir", str(res))
    assert_one_line_exit_two(result, "another checkpoint", res)
    other = tmp_path / "other.yaml"
    other.write_text("prompts:\n  - 'another prompt'\n")
    result = invoke("parity", *FAST, "--prompts", str(other), "--goldens", str(golden_dir), "--results-dir", str(res))
    assert_one_line_exit_two(result, "other prompts", res)
    result = invoke("parity", *FAST[:-1], "5", "--prompts", str(prompts_file), "--goldens", str(golden_dir),
                    "--results-dir", str(res))
    assert_one_line_exit_two(result, "another number of tokens", res)


def test_missing_or_corrupt_goldens_directory_is_refused(golden_dir, prompts_file, tmp_path):
    res = tmp_path / "res"
    result = invoke("parity", *FAST, "--prompts", str(prompts_file), "--goldens", str(tmp_path / "none"),
                    "--results-dir", str(res))
    assert_one_line_exit_two(result, "does not exist", res)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(golden_dir, corrupt)
    (corrupt / "golden.json").write_text("[]")
    result = invoke("parity", *FAST, "--prompts", str(prompts_file), "--goldens", str(corrupt),
                    "--results-dir", str(res))
    assert_one_line_exit_two(result, "corrupt", res)


def test_max_memory_below_one_layer_is_refused_before_loading(prompts_file, tmp_path):
    out = tmp_path / "g"
    result = invoke("reference", "--prompts", str(prompts_file), "--max-memory", "64KiB", "--out", str(out))
    assert_one_line_exit_two(result, "cannot hold", out)
    result = invoke("reference", "--prompts", str(prompts_file), "--max-memory", "lots", "--out", str(out))
    assert_one_line_exit_two(result, "is not a size", out)


def test_checkpoint_whose_index_names_a_missing_shard_is_refused(tiny_model_dir, prompts_file, tmp_path):
    from granite_bench.reference.weights import write_sharded_safetensors
    from safetensors.torch import load_file
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for name in ("config.json",):
        shutil.copy(tiny_model_dir / name, sharded / name)
    write_sharded_safetensors(iter(load_file(tiny_model_dir / "model.safetensors").items()), sharded, 300_000)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    missing = sorted(set(index["weight_map"].values()))[1]
    (sharded / missing).unlink()
    out, res = tmp_path / "g", tmp_path / "res"
    result = invoke("reference", "--model", str(sharded), "--prompts", str(prompts_file), "--out", str(out))
    assert_one_line_exit_two(result, missing, out)
    result = invoke("parity", *FAST, "--model", str(sharded), "--prompts", str(prompts_file), "--results-dir",
                    str(res))
    assert_one_line_exit_two(result, missing, res)
