"""lm-eval through the implementation on a sliding-window Granite: the trained canary's weights in a
GraniteSWAForCausalLM (a window of 8 on every other layer, learned-sink slots filled with moderate values), written
by HF and evaluated sample by sample against HF's own (eager) model."""

import json
import logging
import shutil

import pytest
import torch
import transformers

from granite_bench.accuracy.run import run_eval
from granite_bench.reference.weights import resolve_model_dir

logging.getLogger("lm_eval").setLevel(logging.ERROR)
WINDOW = 8


def canary_with_windows(out):
    """The canary's tensors in a GraniteSWA model: odd layers slide over 8 tokens, every head gets a sink in
    [-1, 3] (it takes part of each head's attention), so the function differs from the canary's where it matters."""
    dense_dir = resolve_model_dir("canary")
    dense = transformers.GraniteForCausalLM.from_pretrained(dense_dir, dtype=torch.float32)
    config = {k: v for k, v in json.loads((dense_dir / "config.json").read_text()).items()
              if k not in ("architectures", "model_type", "transformers_version")}
    layers = config["num_hidden_layers"]
    swa_config = transformers.GraniteSWAConfig(
        **config, sliding_window=WINDOW,
        layer_types=["sliding_attention" if i % 2 else "full_attention" for i in range(layers)])
    swa = transformers.GraniteSWAForCausalLM(swa_config)
    torch.manual_seed(4)
    with torch.no_grad():
        state = dense.state_dict()
        for name, value in swa.state_dict().items():
            if name in state:
                value.copy_(state[name])
        for layer in swa.model.layers:
            layer.self_attn.sinks.uniform_(-1.0, 3.0)
    swa.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(dense_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    model_dir = canary_with_windows(tmp_path_factory.mktemp("canary-swa"))
    return run_eval(str(model_dir), ["canary_recall", "canary_copy"], dtype="float32", limit=16, batch_size=8,
                    seq_len=128)


def test_sliding_window_eval_agrees_with_hf_sample_by_sample(outcome):
    summary = outcome.summary.set_index("task")
    assert outcome.passed, summary["failures"].to_dict()
    assert summary.loc["canary_recall", "argmax_agreement"] == 1.0
    assert summary.loc["canary_copy", "generation_agreement"] == 1.0
    assert summary["max_abs_delta_loglik"].max() < 1e-4


def test_eval_with_the_sinks_dropped_disagrees_with_hf(tmp_path):
    from granite_bench.accuracy.seeded_bugs_swa import SWA_SEEDED_BUGS

    model_dir = canary_with_windows(tmp_path)
    with SWA_SEEDED_BUGS["sinks_dropped"].patch():
        wrong = run_eval(str(model_dir), ["canary_recall"], dtype="float32", limit=4, batch_size=8, seq_len=128)
    assert not wrong.passed
    assert wrong.summary.set_index("task").loc["canary_recall", "max_abs_delta_loglik"] > 1.0
