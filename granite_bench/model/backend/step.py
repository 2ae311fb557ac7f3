"""`DecodeStep`: what one graph call (context encoding or token generation) hands every decoder layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DecodeStep:
    """What one graph call hands every decoder layer."""

    cos: torch.Tensor                       # [B, 1, L, d] fp32 RoPE tables at this call's positions (per-layer RoPE
    sin: torch.Tensor                       # bases: a dict base -> table, built by the model's rotary module)
    mask: torch.Tensor | None               # additive [B, 1, 1, kv_len] (token generation; a windowed model: a dict
                                            # layer kind -> boolean mask), None = causal prefill
    positions: torch.Tensor | None = None   # [B] token generation positions; None = context encoding
    kv_len: int = 0                         # KV slots token generation attends over (its bucket)
    attention_mask: torch.Tensor | None = None  # [B, L] 1 = real token (context encoding)
    cache: torch.nn.Module | None = None      # the model's static caches, written in place by the layers
    capture: list | None = None             # localisation: (layer, sub-block, tensor) appended in execution order

    def record(self, layer: int, sub: str, tensor: torch.Tensor) -> None:
        if self.capture is not None:
            self.capture.append((layer, sub, tensor))
