"""The one registry of Granite architectures (optimum-neuron's `auto_models.py`): `model_type` -> everything the rest of
granite-bench needs to know about that architecture, as plain data.

Importable without torch or transformers, so preflight can refuse a checkpoint before any heavy import: module paths
are strings (resolved by `model/auto.py`), tensor shapes are templates over named sizes read from config.json.

A new architecture is one `modeling_<arch>.py` (model class + state-dict converter) and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class UnsupportedArchitecture(ValueError):
    """A config.json whose model_type has no entry here (one line naming the supported ones)."""


# Sizes a tensor-shape template may name, with the config key each comes from and HF's default.
SIZE_KEYS = {
    "hidden": ("hidden_size", 4096),
    "intermediate": ("intermediate_size", 11008),
    "vocab": ("vocab_size", 32000),
    "heads": ("num_attention_heads", 32),
    "experts": ("num_local_experts", 8),
    "top_k": ("num_experts_per_tok", 2),
    "shared": ("shared_intermediate_size", 0),
}


@dataclass(frozen=True)
class SubBlock:
    """A point in a decoder layer where localisation compares residual streams (or a block's own output).

    `hf_module`: the module of HF's decoder layer to hook ("" = the layer itself); `capture`: "input" (its first
    argument), "output" (its output, the first element of a tuple) or "routing" (a router's (logits, top-k weights,
    top-k index) as a dense [tokens, experts] routing matrix). Sub-blocks whose module a layer lacks are skipped."""

    name: str
    hf_module: str
    capture: str


ATTENTION = SubBlock("attention", "post_attention_layernorm", "input")   # residual stream after attention
LAYER_OUT = SubBlock("mlp", "", "output")                                # residual stream after the MLP / MoE
ROUTER = SubBlock("router", "block_sparse_moe.router", "routing")
EXPERTS = SubBlock("experts", "block_sparse_moe.experts", "output")
SHARED_MLP = SubBlock("shared_mlp", "shared_mlp", "output")

# HF tensor names per decoder layer -> shape templates. A name may list alternatives ("a|b"): checkpoints written
# by transformers (save_pretrained) and the layout transformers 5 holds in memory name the same tensor differently.
ATTENTION_TENSORS = {
    "self_attn.q_proj.weight": ("q_dim", "hidden"), "self_attn.k_proj.weight": ("kv_dim", "hidden"),
    "self_attn.v_proj.weight": ("kv_dim", "hidden"), "self_attn.o_proj.weight": ("hidden", "q_dim"),
    "input_layernorm.weight": ("hidden",), "post_attention_layernorm.weight": ("hidden",),
}
DENSE_MLP_TENSORS = {
    "mlp.gate_proj.weight": ("intermediate", "hidden"), "mlp.up_proj.weight": ("intermediate", "hidden"),
    "mlp.down_proj.weight": ("hidden", "intermediate"),
}
MOE_TENSORS = {
    "block_sparse_moe.router.layer.weight|block_sparse_moe.router.weight": ("experts", "hidden"),
    "block_sparse_moe.input_linear.weight|block_sparse_moe.experts.gate_up_proj": ("experts", "2*intermediate",
                                                                                    "hidden"),
    "block_sparse_moe.output_linear.weight|block_sparse_moe.experts.down_proj": ("experts", "hidden",
                                                                                  "intermediate"),
}
SHARED_MLP_TENSORS = {
    "shared_mlp.input_linear.weight": ("2*shared", "hidden"), "shared_mlp.output_linear.weight": ("hidden", "shared"),
}


@dataclass(frozen=True)
class Architecture:
    model_type: str
    model_class: str                    # "module:Class" of the Neuron-style model (one rank's shard)
    converter: str                      # "module:function" HF state dict -> one rank's state dict
    hf_class: str                       # transformers class of the reference
    hf_config_class: str                # transformers config class (presets are built from it)
    description: str
    sub_blocks: tuple[SubBlock, ...]    # per decoder layer, in execution order
    layer_tensors: dict = field(default_factory=dict)   # HF per-layer tensor name -> shape template
    tp_divides: tuple[str, ...] = ("hidden", "intermediate")   # sizes every TP degree must divide
    moe: bool = False                   # has routed experts (expert parallelism applies)
    # renames from transformers' in-memory parameter names to the names its checkpoints use (presets write these)
    checkpoint_names: tuple[tuple[str, str], ...] = ()
    hf_attn_implementation: str | None = None   # forced reference attention (None: eager short, SDPA long)


MOE_CHECKPOINT_NAMES = (
    ("block_sparse_moe.router.weight", "block_sparse_moe.router.layer.weight"),
    ("block_sparse_moe.experts.gate_up_proj", "block_sparse_moe.input_linear.weight"),
    ("block_sparse_moe.experts.down_proj", "block_sparse_moe.output_linear.weight"),
)

ARCHITECTURES: dict[str, Architecture] = {
    "granite": Architecture(
        model_type="granite",
        model_class="granite_bench.model.modeling_granite:NeuronGraniteForCausalLM",
        converter="granite_bench.model.modeling_granite:convert_hf_state_dict",
        hf_class="GraniteForCausalLM", hf_config_class="GraniteConfig",
        description="dense Granite 3.x / 4.1",
        sub_blocks=(ATTENTION, LAYER_OUT),
        layer_tensors={**ATTENTION_TENSORS, **DENSE_MLP_TENSORS}),
    "granitemoe": Architecture(
        model_type="granitemoe",
        model_class="granite_bench.model.modeling_granitemoe:NeuronGraniteMoeForCausalLM",
        converter="granite_bench.model.modeling_granitemoe:convert_hf_state_dict",
        hf_class="GraniteMoeForCausalLM", hf_config_class="GraniteMoeConfig",
        description="Granite 3.0/3.1 MoE (top-k routed experts)",
        sub_blocks=(ATTENTION, ROUTER, EXPERTS, LAYER_OUT),
        layer_tensors={**ATTENTION_TENSORS, **MOE_TENSORS}, moe=True,
        checkpoint_names=MOE_CHECKPOINT_NAMES),
    "granitemoeshared": Architecture(
        model_type="granitemoeshared",
        model_class="granite_bench.model.modeling_granitemoeshared:NeuronGraniteMoeSharedForCausalLM",
        converter="granite_bench.model.modeling_granitemoeshared:convert_hf_state_dict",
        hf_class="GraniteMoeSharedForCausalLM", hf_config_class="GraniteMoeSharedConfig",
        description="Granite MoE with a shared MLP beside the experts",
        sub_blocks=(ATTENTION, ROUTER, EXPERTS, SHARED_MLP, LAYER_OUT),
        layer_tensors={**ATTENTION_TENSORS, **MOE_TENSORS, **SHARED_MLP_TENSORS},
        tp_divides=("hidden", "intermediate", "shared"), moe=True,
        checkpoint_names=MOE_CHECKPOINT_NAMES),
}


def supported() -> list[str]:
    return sorted(ARCHITECTURES)


def architecture(model_type: str | None) -> Architecture:
    """The registry entry for `model_type`, or UnsupportedArchitecture naming the supported ones."""
    found = ARCHITECTURES.get(model_type or "")
    if found is None:
        raise UnsupportedArchitecture(f"model_type {model_type!r} is not supported; granite-bench runs "
                                      f"{', '.join(supported())}")
    return found


# -- sizes and shapes from a config.json, without torch ------------------------------------------------------------

def sizes(config: dict) -> dict[str, int]:
    """The named sizes of a config dict (HF's defaults where it leaves one out), plus the derived head sizes."""
    out = {}
    for name, (key, default) in SIZE_KEYS.items():
        value = config.get(key)
        out[name] = int(default if value is None else value)
    out["kv_heads"] = int(config.get("num_key_value_heads") or out["heads"])
    out["head_dim"] = int(config.get("head_dim") or out["hidden"] // max(out["heads"], 1))
    out["q_dim"] = out["heads"] * out["head_dim"]
    out["kv_dim"] = out["kv_heads"] * out["head_dim"]
    out["layers"] = int(config.get("num_hidden_layers", 32))
    return out


def resolve_shape(template: tuple, dims: dict[str, int]) -> tuple[int, ...]:
    """("experts", "2*intermediate", "hidden") -> (E, 2I, H)."""
    shape = []
    for entry in template:
        factor, _, name = entry.rpartition("*")
        shape.append(int(factor or 1) * dims[name])
    return tuple(shape)


def expected_layer_tensors(arch: Architecture, config: dict) -> dict[tuple[str, ...], tuple[int, ...]]:
    """(alternative HF names of one tensor, with the layer prefix) -> shape, for every decoder layer."""
    dims = sizes(config)
    out = {}
    for layer in range(dims["layers"]):
        for names, template in arch.layer_tensors.items():
            if dims["shared"] == 0 and any("shared" in size for size in template):
                continue   # shared_intermediate_size 0: no shared MLP
            out[tuple(f"model.layers.{layer}.{n}" for n in names.split("|"))] = resolve_shape(template, dims)
    return out


def config_problems(arch: Architecture, config: dict) -> list[str]:
    """What in a config.json the implementation cannot run, as one-line reasons ([] when fine)."""
    dims = sizes(config)
    problems = []
    if dims["hidden"] < 1 or dims["heads"] < 1 or dims["hidden"] % dims["heads"] and not config.get("head_dim"):
        problems.append(f"hidden_size {dims['hidden']} is not divisible by num_attention_heads {dims['heads']}")
    if dims["vocab"] < 2:
        problems.append(f"vocab_size {dims['vocab']} must be at least 2")
    if arch.moe:
        if dims["experts"] < 1:
            problems.append(f"num_local_experts {dims['experts']} must be at least 1")
        elif not 1 <= dims["top_k"] <= dims["experts"]:
            problems.append(f"num_experts_per_tok {dims['top_k']} must be between 1 and num_local_experts "
                            f"{dims['experts']}")
    if dims["shared"] < 0:
        problems.append(f"shared_intermediate_size {dims['shared']} must be 0 (none) or positive")
    return problems


def parallel_problems(arch: Architecture, config: dict, tp: int, ep: int = 1) -> list[str]:
    """Why `tp` ranks (with `ep`-way expert parallelism among them) cannot shard this config ([] when they can).
    The attention heads are checked by head_sharding.validate_tp_degree."""
    dims = sizes(config)
    problems = []
    if ep != 1 and not arch.moe:
        problems.append(f"--moe-ep {ep} applies to MoE models only; {arch.model_type} has no experts: drop --moe-ep")
        return problems
    if ep < 1 or tp % ep:
        problems.append(f"--moe-ep {ep} does not divide --tp {tp}: choose an expert-parallel degree that divides it")
        return problems
    if arch.moe and dims["experts"] % ep:
        problems.append(f"--moe-ep {ep} does not divide the {dims['experts']} experts: choose a divisor of "
                        f"num_local_experts")
    for name in arch.tp_divides:
        if name == "shared" and dims["shared"] == 0:
            continue
        # with expert parallelism, an expert's intermediate size is split over tp / ep ranks
        ways = tp // ep if (arch.moe and name == "intermediate") else tp
        if dims[name] % ways:
            key = SIZE_KEYS[name][0]
            problems.append(f"--tp {tp}{f' / --moe-ep {ep}' if ways != tp else ''} does not divide {key} "
                            f"{dims[name]}: choose a TP degree that divides it")
    return problems
