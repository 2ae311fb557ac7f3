"""The shipped task folders run unchanged under lm-eval's own CLI, from a directory that is not the repository."""

import json
import os
import shutil
import subprocess

import pytest

from granite_bench.accuracy import canary_data
from granite_bench.accuracy.baselines import TransformersLM, load_canary
from granite_bench.accuracy.tasks import DEFAULT_TASKS, EVAL_DIR
from granite_bench.reference.weights import resolve_model_dir

LIMIT = 5


@pytest.mark.nightly
@pytest.mark.skipif(shutil.which("lm_eval") is None, reason="lm-eval's console script is not on PATH")
def test_lm_evals_own_cli_runs_every_canary_task_from_another_directory(tmp_path):
    out = tmp_path / "out"
    command = ["lm_eval", "--model", "hf", "--model_args", f"pretrained={resolve_model_dir('canary')},dtype=float32",
               "--include_path", str(EVAL_DIR), "--tasks", ",".join(DEFAULT_TASKS), "--limit", str(LIMIT),
               "--device", "cpu", "--batch_size", "4", "--output_path", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    (results_file,) = out.rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    assert sorted(results) == sorted(DEFAULT_TASKS)
    # the very documents shipped beside the YAMLs: lm-eval's scores equal the canary's on the first LIMIT of them
    canary = TransformersLM(*load_canary()).scorer("canary")
    docs = canary_data.eval_documents()
    assert results["canary_recall"]["acc,none"] == pytest.approx(canary.score("canary_recall", docs["canary_recall"][:LIMIT]))
    assert results["canary_lists"]["acc,none"] == pytest.approx(canary.score("canary_lists", docs["canary_lists"][:LIMIT]))
    assert results["canary_copy"]["exact_match,strip"] == pytest.approx(canary.score("canary_copy", docs["canary_copy"][:LIMIT]))
    assert results["canary_text"]["word_perplexity,none"] > 1.0
