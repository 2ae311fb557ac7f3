"""Modules every Granite architecture is built from (optimum-neuron's `backend/modules/`): tensor-parallel layers,
the attention base with GQA, RoPE, the static KV cache, norms, gated MLP, mixture of experts, checkpoint reading and
rank sharding. The thin `modeling_<arch>.py` files wire them; nothing here knows a `model_type`."""
