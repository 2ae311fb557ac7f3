"""The whole NeuronGraniteForCausalLM against HF GraniteForCausalLM (fp32, eager) on each tiny preset's weights."""

import pytest
import torch

from granite_bench.model.config import NeuronConfig
from granite_bench.reference.hf_reference import load_reference
from granite_bench.reference.weights import load_hf_config, resolve_model_dir
from granite_bench.runtime.runner import load_rank_model

TINY_PRESETS = ["tiny-gqa", "tiny-mqa", "tiny-llama3-rope", "tiny-untied"]
SEQ_LEN = 96
ATOL, RTOL = 5e-5, 1e-5  # fp32: decode measured up to 2.6e-5 (logit std 3.5)


def neuron_model(model_dir, **changes):
    neuron_config = NeuronConfig(**{"batch_size": 2, "sequence_length": SEQ_LEN, "max_context_length": 64,
                                    "context_encoding_buckets": [16, 32, 64], **changes})
    return load_rank_model(model_dir, load_hf_config(model_dir), neuron_config)


def random_tokens(vocab: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(3, vocab, (length,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=TINY_PRESETS)
def models(request):
    model_dir = resolve_model_dir(request.param)
    return neuron_model(model_dir), load_reference(model_dir)


@torch.no_grad()
def test_context_encoding_logits_equal_hf(models):
    ours, reference = models
    vocab = reference.config.vocab_size
    tokens = torch.stack([random_tokens(vocab, 64, seed=0), random_tokens(vocab, 64, seed=1)])
    logits = ours.context_encoding(tokens, torch.ones_like(tokens))
    expected = reference(tokens).logits
    assert logits.shape == expected.shape == (2, 64, vocab)
    torch.testing.assert_close(logits, expected, rtol=RTOL, atol=ATOL)


@torch.no_grad()
def test_token_generation_after_context_encoding_equals_hf_at_later_positions(models):
    """Rows at different positions; positions past the llama3 preset's original context (64) included."""
    ours, reference = models
    vocab = reference.config.vocab_size
    lengths, steps = [20, 57], 10
    sequences = [random_tokens(vocab, n + steps, seed=2 + row) for row, n in enumerate(lengths)]
    prompt = torch.zeros(2, 64, dtype=torch.long)
    mask = torch.zeros(2, 64, dtype=torch.long)
    for row, n in enumerate(lengths):
        prompt[row, :n], mask[row, :n] = sequences[row][:n], 1
    ours.context_encoding(prompt, mask)

    decoded = []
    for step in range(steps):
        positions = torch.tensor(lengths) + step
        ids = torch.stack([sequences[row][p] for row, p in enumerate(positions.tolist())]).view(2, 1)
        decoded.append(ours.token_generation(ids, positions, kv_len=SEQ_LEN)[:, 0])  # [B, V]
    decoded = torch.stack(decoded, dim=1)  # [B, steps, V]
    for row, n in enumerate(lengths):
        expected = reference(sequences[row][None]).logits[0, n:]
        torch.testing.assert_close(decoded[row], expected, rtol=RTOL, atol=ATOL)


@torch.no_grad()
def test_output_logits_off_returns_each_rows_last_token_logits(tiny_model_dir):
    ours = neuron_model(tiny_model_dir, output_logits=False)
    reference = load_reference(tiny_model_dir)
    vocab = reference.config.vocab_size
    lengths = [7, 12]
    rows = [random_tokens(vocab, n, seed=10 + i) for i, n in enumerate(lengths)]
    ids = torch.zeros(2, 16, dtype=torch.long)
    mask = torch.zeros(2, 16, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    logits = ours.context_encoding(ids, mask)
    assert logits.shape == (2, 1, vocab)
    for i, row in enumerate(rows):
        torch.testing.assert_close(logits[i, 0], reference(row[None]).logits[0, -1], rtol=RTOL, atol=ATOL)


def test_granite_multipliers_are_taken_from_the_config(tiny_model_dir):
    ours = neuron_model(tiny_model_dir)
    config = load_hf_config(tiny_model_dir)
    assert ours.embed_tokens.embedding_multiplier == config.embedding_multiplier
    assert ours.lm_head.logits_scaling == config.logits_scaling
    assert all(layer.residual_multiplier == config.residual_multiplier for layer in ours.layers)
    assert all(layer.self_attn.scaling == config.attention_multiplier for layer in ours.layers)
