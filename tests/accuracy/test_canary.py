"""The committed canary checkpoint and the pieces of the script that made it."""

import json
import random

import pytest
import torch
from transformers import AutoTokenizer, GraniteForCausalLM

from granite_bench.accuracy import canary_training
from granite_bench.accuracy.tasks import EVAL_DIR
from granite_bench.reference.weights import resolve_model_dir

CANARY = resolve_model_dir("canary")


def test_canary_is_a_small_granite_with_non_trivial_multipliers_and_gqa():
    config = json.loads((CANARY / "config.json").read_text())
    assert config["model_type"] == "granite" and config["tie_word_embeddings"] is True
    assert config["num_key_value_heads"] < config["num_attention_heads"]
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    assert config["attention_multiplier"] != pytest.approx(head_dim ** -0.5)
    assert config["embedding_multiplier"] != 1 and config["residual_multiplier"] != 1
    assert config["logits_scaling"] != 1
    assert sum(p.stat().st_size for p in CANARY.iterdir()) < 5_000_000


def test_canary_tokenizer_loads_offline_with_bos_eos_and_pad():
    tokenizer = AutoTokenizer.from_pretrained(CANARY)
    assert tokenizer.bos_token_id is not None and tokenizer.eos_token_id is not None
    assert tokenizer.pad_token_id not in (None, tokenizer.eos_token_id)
    text = "recall: 1 q; 2 z | 2 z"
    assert tokenizer.decode(tokenizer.encode(text)) == text  # byte-level: round trips, no bos added


def test_folding_the_multipliers_keeps_the_function():
    settings = canary_training.TrainSettings(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                                             num_kv_heads=2, tokenizer_lines=200, vocab_size=300)
    tokenizer = canary_training.train_tokenizer(settings)
    torch.manual_seed(0)
    plain = GraniteForCausalLM(canary_training.canary_config(settings, tokenizer,
                                                             canary_training.training_multipliers(settings)))
    with torch.no_grad():
        for param in plain.parameters():
            param.add_(torch.randn_like(param) * 0.05)  # away from init, so every weight matters
    folded = canary_training.fold_multipliers(plain, canary_training.canary_multipliers(settings))
    assert folded.config.embedding_multiplier == settings.embedding_multiplier
    assert folded.config.attention_multiplier == settings.attention_multiplier
    ids = torch.tensor([tokenizer.encode("copy: q z m. q z m.")])
    with torch.no_grad():
        expected, actual = plain(input_ids=ids).logits, folded(input_ids=ids).logits
    assert (actual - expected).abs().max() < 1e-4 * expected.abs().max()


def test_training_batches_put_one_example_per_row_and_weight_only_answers():
    settings = canary_training.TrainSettings(tokenizer_lines=500)
    tokenizer = canary_training.train_tokenizer(settings)
    ids, weights = canary_training.training_batch(tokenizer, random.Random(0), settings, progress=0.5)
    assert ids.shape == weights.shape and ids.shape[0] == settings.batch_size
    newline = tokenizer.encode("\n", add_special_tokens=False)[0]
    for row, w in zip(ids.tolist(), weights.tolist()):
        real = [t for t in row if t != tokenizer.pad_token_id]
        assert real.count(newline) == 1 and real[-1] == newline
        assert all(x == 0 for t, x in zip(row, w) if t == tokenizer.pad_token_id)


def test_committed_eval_documents_are_what_the_script_generates():
    generated = canary_training.eval_documents(canary_training.TrainSettings.eval_seed)
    for task in canary_training.EVAL_DOCS:
        lines = (EVAL_DIR / task / f"{task}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == generated[task]
    assert canary_training.TrainSettings.eval_seed != canary_training.TrainSettings.seed
