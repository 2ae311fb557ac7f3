"""The golden: HF Transformers GraniteForCausalLM, fp32, CPU, on the same checkpoint files as the implementation."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GraniteForCausalLM


def load_reference(model_dir: Path) -> GraniteForCausalLM:
    model = GraniteForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


@torch.no_grad()
def greedy_tokens(model: GraniteForCausalLM, prompt: list[int], num_tokens: int) -> list[int]:
    """N greedy tokens for one prompt (no early stop, HF's default cache)."""
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=num_tokens,
                         min_new_tokens=num_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@torch.no_grad()
def forward_with_hidden_states(model: GraniteForCausalLM, tokens: list[int]):
    """Logits [L, V] of every position, plus each layer's residual stream after attention and after the MLP,
    as [(layer, "attention"|"mlp", Tensor[L, H])]."""
    captured = []
    hooks = []
    for idx, layer in enumerate(model.model.layers):
        # input of post_attention_layernorm == residual stream after the attention branch
        hooks.append(layer.post_attention_layernorm.register_forward_pre_hook(
            lambda _m, args, idx=idx: captured.append((idx, "attention", args[0][0].clone()))))
        hooks.append(layer.register_forward_hook(
            lambda _m, _args, output, idx=idx: captured.append(
                (idx, "mlp", (output[0] if isinstance(output, tuple) else output)[0].clone()))))
    try:
        logits = model(torch.tensor([tokens])).logits[0]
    finally:
        for hook in hooks:
            hook.remove()
    return logits.float(), captured
