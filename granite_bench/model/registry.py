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
    argument), "output" (its output, the first element of a tuple), "routing" (a router's (logits, top-k weights,
    top-k index) as a dense [tokens, experts] routing matrix) or "router_logits" (that router's raw logits). Sub-blocks whose module a layer lacks are skipped,
    and so are those whose `requires` module it lacks (a hybrid's "mamba" point on its attention layers)."""

    name: str
    hf_module: str
    capture: str
    requires: str = ""


ATTENTION = SubBlock("attention", "post_attention_layernorm", "input")   # residual stream after attention
LAYER_OUT = SubBlock("mlp", "", "output")                                # residual stream after the MLP / MoE
ROUTER_LOGITS = SubBlock("router_logits", "block_sparse_moe.router", "router_logits")   # raw [tokens, experts]
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
    # per layer kind ("mamba" / "attention" of a hybrid's layer_types) -> extra HF tensor name -> shape template
    kind_tensors: dict = field(default_factory=dict)
    hybrid: bool = False                # Mamba + attention layers (checks below, in the hybrid block)
    sliding_window: bool = False        # per-layer sliding window / full attention, sinks, per-layer RoPE base


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
        sub_blocks=(ATTENTION, ROUTER_LOGITS, ROUTER, EXPERTS, LAYER_OUT),
        layer_tensors={**ATTENTION_TENSORS, **MOE_TENSORS}, moe=True,
        checkpoint_names=MOE_CHECKPOINT_NAMES),
    "granitemoeshared": Architecture(
        model_type="granitemoeshared",
        model_class="granite_bench.model.modeling_granitemoeshared:NeuronGraniteMoeSharedForCausalLM",
        converter="granite_bench.model.modeling_granitemoeshared:convert_hf_state_dict",
        hf_class="GraniteMoeSharedForCausalLM", hf_config_class="GraniteMoeSharedConfig",
        description="Granite MoE with a shared MLP beside the experts",
        sub_blocks=(ATTENTION, ROUTER_LOGITS, ROUTER, EXPERTS, SHARED_MLP, LAYER_OUT),
        layer_tensors={**ATTENTION_TENSORS, **MOE_TENSORS, **SHARED_MLP_TENSORS},
        tp_divides=("hidden", "intermediate", "shared"), moe=True,
        checkpoint_names=MOE_CHECKPOINT_NAMES),
}


# -- sliding-window Granite ("swash": granite_swa, granitemoe_swa) ----------------------------------------------------
SINK_TENSORS = {"self_attn.sinks": ("heads",)}
LAYER_KINDS = ("full_attention", "sliding_attention")

# each head's attention output (o_proj's input): a sink only rescales it, head by head (parity/localise.py)
ATTENTION_HEADS = SubBlock("attention_heads", "self_attn.o_proj", "input")

ARCHITECTURES.update({
    "granite_swa": Architecture(
        model_type="granite_swa",
        model_class="granite_bench.model.modeling_granite_swa:NeuronGraniteSWAForCausalLM",
        converter="granite_bench.model.modeling_granite_swa:convert_hf_state_dict",
        hf_class="GraniteSWAForCausalLM", hf_config_class="GraniteSWAConfig",
        description="sliding-window Granite with attention sinks and per-layer RoPE (swash dense)",
        sub_blocks=(ATTENTION_HEADS, ATTENTION, LAYER_OUT),
        layer_tensors={**ATTENTION_TENSORS, **SINK_TENSORS, **DENSE_MLP_TENSORS},
        hf_attn_implementation="eager", sliding_window=True),
    "granitemoe_swa": Architecture(
        model_type="granitemoe_swa",
        model_class="granite_bench.model.modeling_granitemoe_swa:NeuronGraniteMoeSWAForCausalLM",
        converter="granite_bench.model.modeling_granitemoe_swa:convert_hf_state_dict",
        hf_class="GraniteMoeSWAForCausalLM", hf_config_class="GraniteMoeSWAConfig",
        description="sliding-window Granite MoE with attention sinks and per-layer RoPE (swash MoE)",
        sub_blocks=(ATTENTION_HEADS, ATTENTION, ROUTER_LOGITS, ROUTER, EXPERTS, SHARED_MLP, LAYER_OUT),
        layer_tensors={**ATTENTION_TENSORS, **SINK_TENSORS, **MOE_TENSORS, **SHARED_MLP_TENSORS},
        tp_divides=("hidden", "intermediate", "shared"), moe=True,
        hf_attn_implementation="eager", sliding_window=True),   # save_pretrained keeps the in-memory expert names
})


def window_problems(config: dict) -> list[str]:
    """What in a sliding-window config.json cannot run: `sliding_window` < 1, `layer_types` of the wrong length or
    with unknown kinds, `layer_rope_theta` of the wrong length or negative."""
    layers = int(config.get("num_hidden_layers", 32))
    problems = []
    window = config.get("sliding_window", 128)
    kinds = config.get("layer_types")
    no_sliding_layer = isinstance(kinds, list) and "sliding_attention" not in kinds   # then a null window is fine
    bad_window = isinstance(window, bool) or not isinstance(window, int) or window < 1
    if bad_window and not (window is None and no_sliding_layer):
        problems.append(f"sliding_window {window!r} must be a positive integer")
    if kinds is not None:
        if not isinstance(kinds, list) or len(kinds) != layers:
            problems.append(f"layer_types must list one kind per layer ({layers}), got "
                            f"{len(kinds) if isinstance(kinds, list) else kinds!r}")
        else:
            unknown = sorted({str(k) for k in kinds if k not in LAYER_KINDS})
            if unknown:
                problems.append(f"layer_types has unknown kind {unknown[0]!r} (known: {', '.join(LAYER_KINDS)})")
    thetas = config.get("layer_rope_theta")
    if thetas is not None:
        if not isinstance(thetas, list) or len(thetas) != layers:
            problems.append(f"layer_rope_theta must list one RoPE base per layer ({layers}), got "
                            f"{len(thetas) if isinstance(thetas, list) else thetas!r}")
        elif any(isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0 for t in thetas):
            bad = next(t for t in thetas if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0)
            problems.append(f"layer_rope_theta has {bad!r}: each base must be a number >= 0 (0 = NoPE)")
    return problems


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
    kinds = hybrid_layer_kinds(config.get("layer_types"), dims["layers"]) if arch.hybrid else None
    if arch.hybrid:
        dims.update(mamba_sizes(config, dims))
    out = {}
    for layer in range(dims["layers"]):
        templates = {**arch.layer_tensors, **arch.kind_tensors.get(kinds[layer] if kinds else "", {})}
        for names, template in templates.items():
            if dims["shared"] == 0 and any("shared" in size for size in template):
                continue   # shared_intermediate_size 0: no shared MLP
            if arch.hybrid and "experts" in template and dims["experts"] == 0:
                continue   # a hybrid without routed experts (shared MLP only)
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
    if arch.hybrid:
        problems += hybrid_config_problems(config, dims)
    if arch.sliding_window:
        problems.extend(window_problems(config))
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
    if arch.hybrid:
        problems += hybrid_parallel_problems(config, dims, tp)
    return problems


# -- Granite 4.0 hybrid (granitemoehybrid): Mamba2 / attention layers, shared MLP, optional experts ---------------

# layer_types names (transformers 5 renames mamba -> linear_attention, attention -> full_attention on load)
HYBRID_LAYER_NAMES = {"mamba": "mamba", "linear_attention": "mamba", "attention": "attention",
                      "full_attention": "attention"}
MAMBA_GATED_NORM = SubBlock("gated_norm", "mamba.norm", "output")              # inside the mixer, before out_proj
MAMBA_SUB_BLOCK = SubBlock("mamba", "post_attention_layernorm", "input", requires="mamba")
HYBRID_ATTENTION = SubBlock("attention", "post_attention_layernorm", "input", requires="self_attn")
MAMBA_TENSORS = {
    "mamba.in_proj.weight": ("mamba_projection", "hidden"),
    "mamba.conv1d.weight": ("mamba_conv_channels", "one", "mamba_conv"),
    "mamba.A_log": ("mamba_heads",), "mamba.D": ("mamba_heads",), "mamba.dt_bias": ("mamba_heads",),
    "mamba.norm.weight": ("mamba_inner",), "mamba.out_proj.weight": ("hidden", "mamba_inner"),
}
HYBRID_ATTENTION_TENSORS = {k: v for k, v in ATTENTION_TENSORS.items() if k.startswith("self_attn.")}
HYBRID_LAYER_TENSORS = {k: v for k, v in ATTENTION_TENSORS.items() if not k.startswith("self_attn.")}

ARCHITECTURES["granitemoehybrid"] = Architecture(
    model_type="granitemoehybrid",
    model_class="granite_bench.model.modeling_granitemoehybrid:NeuronGraniteMoeHybridForCausalLM",
    converter="granite_bench.model.modeling_granitemoehybrid:convert_hf_state_dict",
    hf_class="GraniteMoeHybridForCausalLM", hf_config_class="GraniteMoeHybridConfig",
    description="Granite 4.0 hybrid: Mamba2 and attention layers, shared MLP, optional routed experts",
    sub_blocks=(MAMBA_GATED_NORM, MAMBA_SUB_BLOCK, HYBRID_ATTENTION, ROUTER_LOGITS, ROUTER, EXPERTS, SHARED_MLP,
                LAYER_OUT),
    layer_tensors={**HYBRID_LAYER_TENSORS, **MOE_TENSORS, **SHARED_MLP_TENSORS},
    kind_tensors={"mamba": MAMBA_TENSORS, "attention": HYBRID_ATTENTION_TENSORS},
    tp_divides=("hidden", "shared"), hybrid=True,
    checkpoint_names=MOE_CHECKPOINT_NAMES)


def hybrid_layer_kinds(layer_types, num_layers: int) -> list[str]:
    """"mamba" / "attention" per layer (unknown names kept as given, for config_problems to name); HF's default
    when layer_types is absent: every layer Mamba."""
    if layer_types is None:
        return ["mamba"] * num_layers
    return [HYBRID_LAYER_NAMES.get(t, t) if isinstance(t, str) else repr(t) for t in layer_types]


def mamba_sizes(config: dict, dims: dict[str, int]) -> dict[str, int]:
    """The Mamba2 sizes of a hybrid config (HF's defaults where it leaves one out)."""
    def get(key: str, default):
        value = config.get(key)
        return default if value is None else value

    heads, groups, state = int(get("mamba_n_heads", 128)), int(get("mamba_n_groups", 1)), int(get("mamba_d_state", 256))
    inner = int(get("mamba_expand", 2)) * dims["hidden"]
    head_dim = get("mamba_d_head", "auto")
    head_dim = inner // max(heads, 1) if head_dim == "auto" else int(head_dim)
    conv_channels = inner + 2 * groups * state
    return {"mamba_heads": heads, "mamba_groups": groups, "mamba_state": state, "mamba_inner": inner,
            "mamba_head_dim": head_dim, "mamba_conv": int(get("mamba_d_conv", 4)),
            "mamba_chunk": int(get("mamba_chunk_size", 256)), "mamba_conv_channels": conv_channels,
            "mamba_projection": inner + conv_channels + heads, "one": 1}


def hybrid_config_problems(config: dict, dims: dict[str, int]) -> list[str]:
    problems = []
    kinds = hybrid_layer_kinds(config.get("layer_types"), dims["layers"])
    bad = sorted({k for k in kinds if k not in ("mamba", "attention")})
    if bad:
        problems.append(f"layer_types has {', '.join(repr(b) for b in bad)}: each layer must be 'mamba' or "
                        f"'attention'")
    if len(kinds) != dims["layers"]:
        problems.append(f"layer_types lists {len(kinds)} layers but num_hidden_layers is {dims['layers']}: give "
                        f"one type per layer")
    m = mamba_sizes(config, dims)
    if m["mamba_heads"] < 1 or m["mamba_groups"] < 1 or m["mamba_heads"] % m["mamba_groups"]:
        problems.append(f"mamba_n_groups {m['mamba_groups']} must divide mamba_n_heads {m['mamba_heads']}")
    elif m["mamba_head_dim"] * m["mamba_heads"] != m["mamba_inner"]:
        problems.append(f"mamba_d_head {m['mamba_head_dim']} x mamba_n_heads {m['mamba_heads']} must equal "
                        f"mamba_expand x hidden_size ({m['mamba_inner']})")
    if m["mamba_chunk"] < 1 or m["mamba_conv"] < 1 or m["mamba_state"] < 1:
        problems.append("mamba_chunk_size, mamba_d_conv and mamba_d_state must be at least 1")
    if dims["experts"] < 0 or dims["experts"] and not 1 <= dims["top_k"] <= dims["experts"]:
        problems.append(f"num_experts_per_tok {dims['top_k']} must be between 1 and num_local_experts "
                        f"{dims['experts']} (or num_local_experts 0: no routed experts)")
    if config.get("position_embedding_type") not in (None, "rope", "nope"):
        problems.append(f"position_embedding_type {config.get('position_embedding_type')!r} must be 'rope' or "
                        f"'nope'")
    return problems


def hybrid_parallel_problems(config: dict, dims: dict[str, int], tp: int) -> list[str]:
    """TP over Mamba heads: tp must divide the heads, and either divide the groups (a rank holds whole groups) or
    be a multiple of them (tp / groups ranks share one group's B/C); anything else would split a rank's heads
    across groups."""
    m = mamba_sizes(config, dims)
    problems = []
    if "mamba" not in hybrid_layer_kinds(config.get("layer_types"), dims["layers"]):
        return problems   # attention layers only (granite-4.0-micro): no Mamba head is sharded
    if m["mamba_heads"] % tp:
        problems.append(f"--tp {tp} does not divide mamba_n_heads {m['mamba_heads']}: choose a TP degree that "
                        f"divides it")
    elif m["mamba_groups"] % tp and tp % m["mamba_groups"]:
        problems.append(f"--tp {tp} splits the Mamba groups (mamba_n_groups {m['mamba_groups']}): choose a TP "
                        f"degree that divides the groups or is a multiple of them")
    if dims["experts"] > 0 and dims["intermediate"] % tp:
        problems.append(f"--tp {tp} does not divide intermediate_size {dims['intermediate']}: choose a TP degree "
                        f"that divides it")
    return problems


def hf_generate_can_cache(arch: Architecture, config: dict) -> bool:
    """Whether HF's `generate` can keep its cache for this config: transformers' hybrid cache asks an attention
    layer for the sequence length, so a hybrid cut to Mamba layers only must generate without it."""
    if not arch.hybrid:
        return True
    return "attention" in hybrid_layer_kinds(config.get("layer_types"), int(config.get("num_hidden_layers", 32)))
