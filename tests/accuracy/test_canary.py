"""The committed canary checkpoint, its eval documents, and the pieces of the script that made it
(scripts/train_canary.py, outside the installed package)."""

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, GraniteForCausalLM

import granite_bench
from granite_bench.accuracy import canary_data
from granite_bench.accuracy.tasks import EVAL_DIR
from granite_bench.reference.weights import resolve_model_dir

CANARY = resolve_model_dir("canary")
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_canary.py"


@pytest.fixture(scope="module")
def train_canary():
    spec = importlib.util.spec_from_file_location("train_canary", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_installed_package_holds_no_training_script():
    package = Path(granite_bench.__file__).parent
    assert not list(package.rglob("*train*.py"))
    assert SCRIPT.exists()


def test_canary_is_a_small_granite_with_non_trivial_multipliers_and_gqa():
    config = json.loads((CANARY / "config.json").read_text())
    assert config["model_type"] == "granite" and config["tie_word_embeddings"] is True
    assert config["num_key_value_heads"] < config["num_attention_heads"]
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    assert config["attention_multiplier"] != pytest.approx(head_dim ** -0.5)
    assert config["embedding_multiplier"] != 1 and config["residual_multiplier"] != 1
    assert config["logits_scaling"] != 1
    assert sum(p.stat().st_size for p in CANARY.iterdir()) < 5_000_000  # ships in the wheel


def test_canary_tokenizer_loads_offline_and_keeps_every_task_word_one_token():
    tokenizer = AutoTokenizer.from_pretrained(CANARY)
    assert tokenizer.bos_token_id is not None and tokenizer.eos_token_id is not None
    assert tokenizer.pad_token_id not in (None, tokenizer.eos_token_id)
    text = "recall: lamp q, door z | door z"
    assert tokenizer.decode(tokenizer.encode(text)) == text  # byte-level: round trips, no bos added
    split = [w for w in canary_data.single_token_words() if len(tokenizer.encode(w, add_special_tokens=False)) != 1]
    assert split == []


def test_training_note_records_seed_recipe_and_losses():
    note = (CANARY / "TRAINING.md").read_text()
    assert "python scripts/train_canary.py" in note and '"seed"' in note
    losses = [line for line in note.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(losses) >= 10


def test_folding_the_multipliers_keeps_the_function(train_canary):
    settings = train_canary.TrainSettings(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                                          num_kv_heads=2, tokenizer_lines=200, vocab_size=300)
    tokenizer = train_canary.train_tokenizer(settings)
    torch.manual_seed(0)
    plain = GraniteForCausalLM(train_canary.canary_config(settings, tokenizer,
                                                          train_canary.training_multipliers(settings)))
    with torch.no_grad():
        for param in plain.parameters():
            param.add_(torch.randn_like(param) * 0.05)  # away from init, so every weight matters
    folded = train_canary.fold_multipliers(plain, train_canary.canary_multipliers(settings))
    assert folded.config.embedding_multiplier == settings.embedding_multiplier
    assert folded.config.attention_multiplier == settings.attention_multiplier
    ids = torch.tensor([tokenizer.encode("copy: q z m. q z m.")])
    with torch.no_grad():
        expected, actual = plain(input_ids=ids).logits, folded(input_ids=ids).logits
    assert (actual - expected).abs().max() < 1e-4 * expected.abs().max()
    # the residual stream scaled as well: the same function but for rms_norm_eps, not negligible against this random
    # model's stream (RMS ~0.05), hence 1% (a fold that forgot the final norm would be 50% off)
    rescaled = train_canary.fold_multipliers(plain, train_canary.canary_multipliers(settings), residual_scale=0.5)
    with torch.no_grad():
        assert (rescaled(input_ids=ids).logits - expected).abs().max() < 1e-2 * expected.abs().max()


def test_training_batches_put_one_example_per_row_and_weight_padding_zero(train_canary):
    settings = train_canary.TrainSettings(tokenizer_lines=500)
    tokenizer = train_canary.train_tokenizer(settings)
    ids, weights = train_canary.training_batch(tokenizer, random.Random(0), settings, progress=0.5)
    assert ids.shape == weights.shape and ids.shape[0] == settings.batch_size
    newline = tokenizer.encode("\n", add_special_tokens=False)[0]
    for row, w in zip(ids.tolist(), weights.tolist()):
        real = [t for t in row if t != tokenizer.pad_token_id]
        assert real.count(newline) == 1 and real[-1] == newline
        assert all(x == 0 for t, x in zip(row, w) if t == tokenizer.pad_token_id)


def test_committed_eval_documents_are_what_the_generator_makes_from_the_eval_seed(train_canary):
    generated = canary_data.eval_documents(canary_data.EVAL_SEED)
    for task in canary_data.EVAL_COUNTS:
        lines = (EVAL_DIR / task / f"{task}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == generated[task]
    assert train_canary.TrainSettings.eval_seed == canary_data.EVAL_SEED != train_canary.TrainSettings.seed


def recall_parts(doc: dict) -> tuple[list[str], list[str], str]:
    """(keys, values, asked key) of a recall prompt "recall: lamp q, door z | door"."""
    listing, asked = doc["prompt"].removeprefix("recall: ").split(" | ")
    pairs = [pair.split() for pair in listing.split(", ")]
    return [k for k, _ in pairs], [v for _, v in pairs], asked


def test_recall_keys_are_shuffled_and_every_value_is_a_choice():
    docs = canary_data.eval_documents()["canary_recall"]
    parts = [recall_parts(d) for d in docs]
    assert len({keys[0] for keys, _, _ in parts}) > 10                            # no fixed key order
    assert len({keys.index(asked) for keys, _, asked in parts}) == canary_data.RECALL_PAIRS  # no fixed slot
    for doc, (keys, values, asked) in zip(docs, parts):
        assert sorted(doc["choices"]) == sorted(values)
        assert doc["choices"][doc["gold"]] == values[keys.index(asked)]


def test_a_notes_second_half_repeats_the_first_halfs_lines_in_another_order():
    for doc in canary_data.eval_documents()["canary_text"][:50]:
        first, second = doc["text"][:doc["second_at"]], doc["text"][doc["second_at"]:]
        assert second.startswith(canary_data.RECAP_MARK)
        lines = first.removeprefix("notes: ").rstrip(".").split("; ")
        again = second.removeprefix(canary_data.RECAP_MARK + " ").rstrip(".").split("; ")
        assert sorted(lines) == sorted(again) and len(set(" ".join(lines).split())) == 4 * len(lines)


def lists_parts(doc: dict) -> tuple[list[str], list[str], str]:
    """(names, lists, asked name) of a lists prompt "lists: cara pink lamp; dan cup | dan"."""
    listing, asked = doc["prompt"].removeprefix("lists: ").split(" | ")
    entries = [entry.split(" ", 1) for entry in listing.split("; ")]
    return [name for name, _ in entries], [items for _, items in entries], asked


def test_lists_choices_differ_in_length_and_the_answers_length_tells_nothing():
    docs = canary_data.eval_documents()["canary_lists"]
    gold_lengths = []
    for doc in docs:
        names, lists, asked = lists_parts(doc)
        assert sorted(len(c.split()) for c in doc["choices"]) == list(canary_data.LIST_LENGTHS)
        assert sorted(doc["choices"]) == sorted(lists) and names.count(asked) == 1
        assert doc["choices"][doc["gold"]] == lists[names.index(asked)]
        words = " ".join(lists).split()
        assert len(set(words)) == len(words)                      # a word names one list only
        gold_lengths.append(len(doc["choices"][doc["gold"]].split()))
    # every length is the answer about as often (200 documents: 50 each expected)
    assert {n: gold_lengths.count(n) for n in canary_data.LIST_LENGTHS} == pytest.approx(
        {n: len(docs) / 4 for n in canary_data.LIST_LENGTHS}, abs=18)
    assert len({names.index(asked) for names, _, asked in map(lists_parts, docs)}) == 4  # no fixed slot
