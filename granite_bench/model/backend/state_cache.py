"""Static caches of a hybrid model: attention KV for its attention layers, conv and SSM states for its Mamba layers.

Every state is a buffer of the one cache module (as the KV cache: a Neuron graph keeps them as aliased state),
sized once from the batch size, written in place by context encoding and token generation. A Mamba layer's state
is O(1) in the sequence length: per batch slot a conv state [channels, kernel - 1] in the model's dtype and an SSM
state [heads, head_dim, d_state], fp32 unless `ssm_state_dtype` says otherwise.
"""

from __future__ import annotations

import torch

from .kv_cache import KVCacheManager
from .mamba import MambaShape


class HybridStateCache(KVCacheManager):
    def __init__(self, attention_layers: list[int], mamba_layers: list[int], batch_size: int, kv_heads: int,
                 sequence_length: int, head_dim: int, dtype: torch.dtype, mamba: MambaShape,
                 ssm_state_dtype: torch.dtype = torch.float32):
        super().__init__(0, batch_size, kv_heads, sequence_length, head_dim, dtype)
        self.num_layers = len(attention_layers) + len(mamba_layers)
        kv_shape = (batch_size, kv_heads, sequence_length, head_dim)
        for layer_idx in attention_layers:
            self.register_buffer(f"k_cache_{layer_idx}", torch.zeros(kv_shape, dtype=dtype), persistent=False)
            self.register_buffer(f"v_cache_{layer_idx}", torch.zeros(kv_shape, dtype=dtype), persistent=False)
        for layer_idx in mamba_layers:
            self.register_buffer(f"conv_state_{layer_idx}",
                                 torch.zeros(batch_size, mamba.conv_channels, mamba.conv_kernel - 1, dtype=dtype),
                                 persistent=False)
            self.register_buffer(f"ssm_state_{layer_idx}",
                                 torch.zeros(batch_size, mamba.heads, mamba.head_dim, mamba.state,
                                             dtype=ssm_state_dtype), persistent=False)

    def mamba_states(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """conv state [B, C, K-1] and SSM state [B, heads, head_dim, d_state] of a Mamba layer."""
        return getattr(self, f"conv_state_{layer_idx}"), getattr(self, f"ssm_state_{layer_idx}")

    def state_bytes_per_slot(self) -> int:
        """Bytes of Mamba state one batch slot holds (all Mamba layers): independent of the sequence length."""
        return sum(b[0].numel() * b.element_size() for name, b in self.named_buffers()
                   if name.startswith(("conv_state_", "ssm_state_")))
