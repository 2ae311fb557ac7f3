"""Per-rank sharded checkpoints: the HF checkpoint converted once per (checkpoint files, tp, dtype, fused_qkv, moe_ep_degree)
into `rank{r}.safetensors` under GRANITE_BENCH_CACHE/shards, reused by later runs (TP ranks and Neuron)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..model.auto import convert_checkpoint, parallel_plan
from ..model.backend.checkpoint import has_sharded_checkpoint, load_hf_state_dict, save_sharded_checkpoint, shard_key
from ..model.config import NeuronConfig


def shard_cache_dir(model_dir: Path, neuron_config: NeuronConfig) -> Path:
    """GRANITE_BENCH_CACHE/shards/<model>-<hash of checkpoint files, tp, dtype, fused_qkv>/."""
    from ..reference.weights import cache_root
    key = shard_key(model_dir, neuron_config.tp_degree, neuron_config.dtype, neuron_config.fused_qkv,
                    neuron_config.moe_ep_degree)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / "shards" / f"{Path(model_dir).name}-tp{neuron_config.tp_degree}-{digest}"


def prepare_shards(model_dir: Path, hf_config, neuron_config: NeuronConfig) -> Path:
    """Convert the HF checkpoint into tp rank shards once; later runs reuse them."""
    directory = shard_cache_dir(model_dir, neuron_config)
    tp = neuron_config.tp_degree
    if not has_sharded_checkpoint(directory, tp):
        plan = parallel_plan(hf_config, tp, neuron_config.moe_ep_degree)
        manifest = shard_key(model_dir, tp, neuron_config.dtype, neuron_config.fused_qkv, neuron_config.moe_ep_degree)
        hf = load_hf_state_dict(model_dir)
        save_sharded_checkpoint(lambda rank: convert_checkpoint(hf, hf_config, rank, tp, neuron_config), plan, tp,
                                directory, manifest)
    return directory
