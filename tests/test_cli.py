"""`granite-bench parity` from the command line: exit codes, one-line errors, nothing half-written."""

import json

import pytest
from typer.testing import CliRunner

from granite_bench.cli import app
from granite_bench.results import ResultStore

FAST = ["--batch-size", "2", "--seq-len", "96", "--buckets", "16,32,64", "--num-tokens", "4"]


def invoke(*args):
    return CliRunner().invoke(app, ["parity", *args])


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.yaml"
    path.write_text("prompts:\n  - 'hello granite'\n  - [5, 6, 7, 8, 9, 10, 11]\n")
    return path


def test_parity_passes_and_writes_positions_and_summary_with_run_metadata(tmp_path, prompts_file):
    result = invoke(*FAST, "--prompts", str(prompts_file), "--results-dir", str(tmp_path / "res"))
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output
    store = ResultStore(tmp_path / "res")
    positions, summary = store.read("parity_positions"), store.read("parity_summary")
    assert len(summary) == 2 and summary["passed"].all()
    assert len(positions) == (len("hello granite") + 4) + (7 + 4)
    for column in ("run_id", "utc_time", "git_sha", "git_dirty", "package_versions", "machine_fingerprint",
                   "device", "dtype", "config_hash", "seed", "schema_version"):
        assert positions[column].notna().all(), column
    config = json.loads(summary["config_json"].iloc[0])
    assert config["init"]["target_logit_std"] > 0  # the random-weight init is recorded with the results


def test_parity_exit_code_is_one_when_the_implementation_is_wrong(tmp_path, prompts_file, monkeypatch):
    from granite_bench.model import modeling_granite

    original = modeling_granite.GraniteDecoderLayer.__init__

    def broken_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.residual_multiplier = 1.0  # the Granite residual scale forgotten

    monkeypatch.setattr(modeling_granite.GraniteDecoderLayer, "__init__", broken_init)
    result = invoke(*FAST, "--prompts", str(prompts_file), "--results-dir", str(tmp_path / "res"))
    assert result.exit_code == 1, result.output
    assert "layer 0 attention" in result.output
    assert ResultStore(tmp_path / "res").read("parity_summary")["passed"].eq(False).all()


@pytest.mark.parametrize("args, message", [
    (["--model", "granite-9000"], "unknown model 'granite-9000'"),
    (["--buckets", "16,abc"], "--buckets takes comma-separated integers"),
    (["--tolerance", "50:oops"], "tolerance"),
    (["--tp", "0"], "--tp must be a positive integer"),
    (["--tp", "128"], "above the supported maximum"),
    (["--dtype", "int8"], "int8"),
    (["--device", "tpu"], "unknown --device"),
])
def test_bad_input_is_one_line_exit_two_and_writes_nothing(tmp_path, prompts_file, args, message):
    results = tmp_path / "res"
    result = invoke(*FAST, "--prompts", str(prompts_file), "--results-dir", str(results), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2  # the command banner at most, then the error line
    assert not results.exists()


def test_prompt_longer_than_largest_bucket_is_refused_before_any_work(tmp_path):
    prompts = tmp_path / "long.json"
    prompts.write_text(json.dumps([list(range(3, 3 + 70))]))
    result = invoke(*FAST, "--prompts", str(prompts), "--results-dir", str(tmp_path / "res"))
    assert result.exit_code == 2
    assert "more than the largest bucket (64)" in result.output
    assert not (tmp_path / "res").exists()


def test_checkpoint_dir_with_malformed_config_is_refused(tmp_path, prompts_file):
    bad = tmp_path / "ckpt"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    result = invoke(*FAST, "--prompts", str(prompts_file), "--model", str(bad), "--results-dir", str(tmp_path / "r"))
    assert result.exit_code == 2
    assert "is not valid JSON" in result.output


def test_results_go_to_granite_bench_results_under_the_working_directory_by_default(tmp_path, prompts_file,
                                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(*FAST, "--prompts", str(prompts_file))
    assert result.exit_code == 0, result.output
    store = ResultStore(tmp_path / "granite-bench-results")
    assert len(store.read("parity_summary")) == 2 and len(store.committed_runs()) == 1


def test_stored_parity_rows_name_the_layers_and_static_shapes_that_were_checked(tmp_path, prompts_file):
    result = invoke(*FAST, "--layers", "2", "--prompts", str(prompts_file), "--results-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    summary = ResultStore(tmp_path / "r").read("parity_summary")
    assert summary["num_layers"].tolist() == [2, 2]
    assert summary["batch_size"].tolist() == [2, 2] and summary["seq_len"].tolist() == [96, 96]
