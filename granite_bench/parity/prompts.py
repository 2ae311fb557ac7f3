"""Parity prompts: texts (tokenised with the checkpoint's tokenizer, or byte-level ids when it has none) or
explicit token-id lists, from a suite file or `--prompts FILE`."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

BYTE_OFFSET = 3  # ids 0-2 are pad/bos/eos in the presets


class PromptError(ValueError):
    """A prompts file that cannot be read."""


def read_prompts_file(path: Path) -> list:
    path = Path(path)
    if not path.exists():
        raise PromptError(f"prompts file {path} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml", ".json"):
        try:
            data = yaml.safe_load(text) if path.suffix != ".json" else json.loads(text)
        except (yaml.YAMLError, json.JSONDecodeError) as err:
            raise PromptError(f"{path} is not valid {path.suffix[1:].upper()}: {str(err).splitlines()[0]}") from None
        if isinstance(data, dict):
            data = data.get("prompts")
        if not isinstance(data, list) or not data:
            raise PromptError(f"{path} must hold a non-empty list of prompts (texts or token-id lists)")
        return data
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise PromptError(f"{path} holds no prompts (one per line)")
    return lines


def encode_prompts(prompts: list, model_dir: Path, vocab_size: int) -> list[list[int]]:
    tokenizer = load_tokenizer(model_dir)
    encoded = []
    for prompt in prompts:
        if isinstance(prompt, list):
            ids = [int(t) for t in prompt]
            if any(t < 0 or t >= vocab_size for t in ids):
                raise PromptError(f"prompt token ids must lie in [0, {vocab_size}) for this model")
        elif isinstance(prompt, dict):
            ids = synthetic_prompt(prompt, vocab_size)
        elif isinstance(prompt, str):
            ids = (tokenizer(prompt)["input_ids"] if tokenizer is not None
                   else [BYTE_OFFSET + (b % (vocab_size - BYTE_OFFSET)) for b in prompt.encode("utf-8")])
        else:
            raise PromptError(f"a prompt must be a text, a list of token ids or {{random_tokens: N, seed: S}}, "
                              f"got {type(prompt).__name__}")
        if not ids:
            raise PromptError("a prompt is empty: every prompt needs at least one token")
        encoded.append(ids)
    return encoded


def synthetic_prompt(spec: dict, vocab_size: int) -> list[int]:
    """{random_tokens: N, seed: S}: N token ids drawn uniformly from [BYTE_OFFSET, vocab) with a seeded generator,
    for long-context suites (a 16k-token prompt written out would be a 100 KB suite file)."""
    import torch
    try:
        length, seed = int(spec["random_tokens"]), int(spec.get("seed", 0))
    except (KeyError, TypeError, ValueError):
        raise PromptError(f"a generated prompt is written {{random_tokens: N, seed: S}}, got {spec}") from None
    if length < 1 or set(spec) - {"random_tokens", "seed"}:
        raise PromptError(f"a generated prompt is written {{random_tokens: N >= 1, seed: S}}, got {spec}")
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(BYTE_OFFSET, vocab_size, (length,), generator=gen).tolist()


def load_tokenizer(model_dir: Path):
    model_dir = Path(model_dir)
    if not any((model_dir / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(model_dir)
