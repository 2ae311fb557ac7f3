"""Text <-> token ids for the server: the checkpoint's own tokenizer when it ships one, else the byte-level ids the
parity prompts use for presets without a tokenizer (id = BYTE_OFFSET + byte)."""

from __future__ import annotations

from pathlib import Path

from ..parity.prompts import BYTE_OFFSET, load_tokenizer


class TokenCodec:
    def __init__(self, model_dir: Path, vocab_size: int, eos_token_id):
        self.tokenizer = load_tokenizer(model_dir)
        self.vocab_size = vocab_size
        eos = eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
        self.eos_ids = frozenset(int(t) for t in eos if t is not None)

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is not None:
            return list(self.tokenizer(text)["input_ids"])
        return [BYTE_OFFSET + (b % (self.vocab_size - BYTE_OFFSET)) for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer is not None:
            return self.tokenizer.decode(ids)
        return "".join(self.piece(i) for i in ids)

    def piece(self, token: int) -> str:
        """One token's text (a byte-level id outside the byte range reads as <id>)."""
        if self.tokenizer is not None:
            return self.tokenizer.decode([token])
        byte = token - BYTE_OFFSET
        return chr(byte) if 0 <= byte < 256 else f"<{token}>"

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """The tokenizer's chat template when it has one, else 'role: content' lines and an 'assistant:' turn."""
        if self.tokenizer is not None and getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return self.encode("\n".join(lines) + "\nassistant:")
