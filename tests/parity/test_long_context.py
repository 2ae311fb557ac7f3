"""Long context: the long-context suite (a 16,000-token prompt, llama3 RoPE with original context 8192) catches RoPE
errors that only show past a few hundred or past 8192 positions, which the short default suite cannot see."""

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from granite_bench.cli import app
from granite_bench.model.backend.rope import RotaryEmbedding

SUITES = Path(__file__).resolve().parents[2] / "suites" / "parity"
ORIGINAL_CONTEXT = 8192  # original_max_position_embeddings of the tiny-long-context preset


def parity(suite: str):
    return CliRunner().invoke(app, ["parity", "--suite", str(SUITES / suite), "--no-save"])


def clamped_table(original):
    """A cos/sin table that stops at original_max_position_embeddings and clamps every later position to its end."""
    return lambda self, position_ids: original(self, position_ids.clamp(max=ORIGINAL_CONTEXT - 1))


def positions_held_in_bf16(original):
    """Angles from position ids held in bf16: exact up to 256, then rounded (to a multiple of 128 near 16k)."""
    return lambda self, position_ids: original(self, position_ids.to(torch.bfloat16).to(torch.long))


@pytest.fixture(scope="module")
def clean_long_context():
    """The unpatched implementation's long-context parity, run once for every bug below."""
    return parity("long-context.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("bug", [clamped_table, positions_held_in_bf16])
def test_rope_error_at_long_positions_fails_long_context_suite_and_passes_default_suite(bug, monkeypatch,
                                                                                        clean_long_context):
    clean = clean_long_context
    assert clean.exit_code == 0 and "PASS" in clean.output, clean.output

    monkeypatch.setattr(RotaryEmbedding, "forward", bug(RotaryEmbedding.forward))
    long = parity("long-context.yaml")
    assert long.exit_code == 1, long.output
    assert "FAIL" in long.output and "layer 0 attention" in long.output
    short = parity("default.yaml")
    assert short.exit_code == 0 and "PASS" in short.output, short.output
