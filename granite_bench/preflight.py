"""Checks of a command's options before any heavy import (torch, transformers) or model load.

Only the standard library, yaml and the light granite_bench modules that need neither torch nor transformers are
imported here, so a bad option is answered in about a second. Every check raises `BadInput` with one line saying
what to change. What is checked:
- numbers: positive counts (--batch-size, --seq-len, --num-tokens, --layers, --threads, ...);
- the model: a preset file or a checkpoint folder's config.json read as plain JSON (shape, rope_type, --layers,
  TP degree against the head counts), and a checkpoint's weights from their safetensors headers (present, whole,
  every known tensor of the shape the config asks for);
- the memory a run's static KV cache and weights need against what the machine has;
- the results folder: writable and with room for the run, before any work;
- suite and prompts files: present, text, parsable, and of the schema of their kind (granite_bench/schemas.py:
  token ids are whole numbers, a suite's num_tokens an integer, a random prompt of a bounded length, ...);
- devices: --device cuda / neuron only where the hardware and its packages are (runtime/hardware.py, no torch);
- --max-memory: a size, and one that holds the part of the reference that cannot be offloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

# Kept in step with model/rope.py (which imports torch): the rope types the implementation computes.
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Room a results folder must have besides a run's own estimate (parquet footers, temp files, the commit marker).
RESULTS_SLACK_BYTES = 16 << 20


class BadInput(Exception):
    """Input the user must change; printed as one line, exit code 2."""


# ----- numbers ---------------------------------------------------------------------------------------------------

def positive(value, option: str):
    """value unchanged when None or >= 1; else BadInput naming the option."""
    if value is not None and not value >= 1:
        raise BadInput(f"{option} must be a positive integer, got {value}")
    return value


def non_negative(value, option: str):
    if value is not None and not value >= 0:
        raise BadInput(f"{option} must be 0 or more, got {value}")
    return value


def dtype_name(dtype: str, option: str = "--dtype") -> str:
    from .parity.tolerances import canonical_dtype  # yaml only
    try:
        return canonical_dtype(dtype)
    except ValueError:
        raise BadInput(f"unknown {option} {dtype!r}: use float32, bfloat16 or float16") from None


def ssm_state_dtype(dtype: str, config: dict) -> str:
    """--ssm-state-dtype: a dtype name, and only for an architecture that keeps an SSM state."""
    from .model.registry import architecture
    name = dtype_name(dtype, "--ssm-state-dtype")
    if name != "float32" and not architecture(config.get("model_type", "granite")).hybrid:
        raise BadInput(f"--ssm-state-dtype applies to hybrid (Mamba) models only; {config.get('model_type')} keeps "
                       f"no SSM state: drop it")
    return name


def device_name(device: str) -> str:
    if device not in ("cpu", "cuda", "neuron"):
        raise BadInput(f"unknown --device {device!r}: use cpu, cuda or neuron")
    return device


# ----- files -----------------------------------------------------------------------------------------------------

def text_file(path: Path, what: str) -> str:
    """The file's text; BadInput when it is missing, a folder, unreadable or not UTF-8 text."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{what} {path} does not exist")
    if not path.is_file():
        raise BadInput(f"{what} {path} is not a file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BadInput(f"{what} {path} cannot be read: {err.strerror}") from None
    if b"\x00" in data:
        raise BadInput(f"{what} {path} is a binary file: give a UTF-8 text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"{what} {path} is not UTF-8 text: give a UTF-8 text file") from None


def suite_file(path: Path) -> dict:
    import yaml
    text = text_file(path, "suite file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise BadInput(f"suite file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise BadInput(f"suite file {path} must be a mapping of options")
    return data


def prompts_file(path: Path) -> list:
    """The prompts of a --prompts file (read as text first, so a binary file is refused in one line)."""
    from .parity.prompts import PromptError, read_prompts_file  # yaml + json only
    from .schemas import PromptsFile
    text_file(path, "prompts file")
    try:
        prompts = read_prompts_file(path)
    except PromptError as err:
        raise BadInput(str(err)) from None
    if Path(path).suffix in (".yaml", ".yml", ".json"):  # a .txt file is one text per line: nothing to type-check
        typed(PromptsFile, prompts, f"prompts file {path}")
    return prompts


# ----- the model ---------------------------------------------------------------------------------------------------

def model_config(model: str, layers: int | None = None) -> tuple[dict, Path | None]:
    """(config dict, checkpoint folder or None for a random-weight preset), read without transformers."""
    positive(layers, "--layers")
    path = Path(model).expanduser()
    if path.is_dir():
        if layers is not None:
            raise BadInput(f"--layers applies to presets only; {path} is a checkpoint folder: drop --layers")
        return config_json(path), path
    from .reference.presets import PresetError, load_preset  # yaml only
    try:
        preset = load_preset(model)
    except PresetError as err:
        raise BadInput(str(err)) from None
    if preset.checkpoint is not None:
        if layers is not None:
            raise BadInput(f"--layers applies to random-weight presets; '{model}' is a trained checkpoint: "
                           f"drop --layers")
        return config_json(preset.checkpoint), preset.checkpoint
    config = {**preset.config, "model_type": preset.model_type}
    if layers is not None:
        depth = int(config.get("num_hidden_layers", 0))
        if layers > depth:
            raise BadInput(f"--layers {layers} is more than the {depth} layers of '{model}': choose 1..{depth}")
        config["num_hidden_layers"] = layers
        if isinstance(config.get("layer_types"), list):   # a per-layer list is cut with the layers
            config["layer_types"] = config["layer_types"][:layers]
    return config, None


def config_json(folder: Path) -> dict:
    """A checkpoint folder's config.json as a dict: present, UTF-8 JSON, an object, a model_type the registry has."""
    path = folder / "config.json"
    if not path.exists():
        raise BadInput(f"{folder} has no config.json: point --model at a Granite checkpoint directory")
    try:
        data = json.loads(text_file(path, "config"))
    except json.JSONDecodeError as err:
        raise BadInput(f"{path} is not valid JSON ({err.msg}, line {err.lineno}): fix or re-download it") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path} must hold a JSON object: fix or re-download it")
    from .model.registry import UnsupportedArchitecture, architecture  # plain data
    try:
        architecture(data.get("model_type"))
    except UnsupportedArchitecture as err:
        raise BadInput(f"{path}: {err}") from None
    return data


def rope_type(config: dict) -> str:
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    return (params.get("rope_type") or params.get("type") or "default") if isinstance(params, dict) else "default"


def shape(config: dict) -> dict:
    """The numbers the checks need (the registry's named sizes, HF's defaults where a config leaves them out)."""
    from .model.registry import sizes
    dims = sizes(config)
    dims["tied"] = bool(config.get("tie_word_embeddings", True))
    dims["model_type"] = config.get("model_type", "granite")
    return dims


def check_model(config: dict, tp: int | None, where: str, ep: int = 1) -> dict:
    """Refuse a model the implementation cannot run: an architecture the registry lacks, sizes it cannot build
    (experts, top-k, heads), the rope_type, no layers, a TP / expert-parallel degree it cannot be sharded over."""
    from .model.registry import UnsupportedArchitecture, architecture, config_problems, parallel_problems
    try:
        arch = architecture(config.get("model_type", "granite"))
    except UnsupportedArchitecture as err:
        raise BadInput(f"{where}: {err}") from None
    found = rope_type(config)
    if found not in SUPPORTED_ROPE_TYPES:
        raise BadInput(f"{where}: rope_type '{found}' is not supported (supported: "
                       f"{', '.join(SUPPORTED_ROPE_TYPES)})")
    dims = shape(config)
    if dims["layers"] < 1:
        raise BadInput(f"{where} has {dims['layers']} layers: a model with no layers checks nothing")
    problems = config_problems(arch, config)
    if problems:
        raise BadInput(f"{where}: {problems[0]}")
    if tp is not None:
        from .model.backend.head_sharding import TPDegreeError, validate_tp_degree  # dataclasses only
        try:
            validate_tp_degree(dims["heads"], dims["kv_heads"], tp)
        except TPDegreeError as err:
            raise BadInput(str(err)) from None
        problems = parallel_problems(arch, config, tp, ep)
        if problems:
            raise BadInput(problems[0])
    return dims


def expected_tensor_shapes(config: dict) -> dict[tuple[str, ...], tuple[int, ...]]:
    """(alternative HF names of a tensor) -> shape for this config: the tensors the architecture's converter reads."""
    from .model.registry import architecture, expected_layer_tensors
    dims = shape(config)
    h = dims["hidden"]
    shapes = {("model.embed_tokens.weight",): (dims["vocab"], h), ("model.norm.weight",): (h,)}
    if not dims["tied"]:
        shapes[("lm_head.weight",)] = (dims["vocab"], h)
    shapes.update(expected_layer_tensors(architecture(dims["model_type"]), config))
    return shapes


def safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file; BadInput when the file is not whole."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise BadInput(f"{path} is truncated ({size} bytes): re-download or re-create the checkpoint")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise BadInput(f"{path} is truncated (header of {length} bytes, file of {size}): re-download it")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadInput(f"{path} is not a safetensors file (unreadable header): re-download it") from None
    end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    if 8 + length + end > size:
        raise BadInput(f"{path} is truncated ({size} bytes, its tensors need {8 + length + end}): re-download it")
    return header


def check_weights(folder: Path, config: dict) -> None:
    """A checkpoint folder's safetensors files are there, whole, and hold tensors of the config's shapes."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise BadInput(f"{index} is not a valid safetensors index: re-download it") from None
    elif (folder / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise BadInput(f"{folder} has config.json but no weights (model.safetensors or its index): "
                       f"download the weights into it")
    found: dict[str, tuple[int, ...]] = {}
    for name in files:
        path = folder / name
        if not path.exists():
            raise BadInput(f"checkpoint file {path} is missing: re-download or re-create the model")
        header = safetensors_header(path)
        found.update({k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"})
    for names, want in expected_tensor_shapes(config).items():
        name = next((n for n in names if n in found), None)
        if name is None:
            if names[0] == "model.norm.weight" or names[0].startswith("model.layers."):
                raise BadInput(f"{folder} has no tensor {' or '.join(names)}: the checkpoint does not match its "
                               f"config.json")
            continue
        if found[name] != want:
            raise BadInput(f"tensor {name} in {folder} has shape {list(found[name])}, but config.json asks for "
                           f"{list(want)}: the checkpoint does not match its config")


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None (the check is skipped)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def run_memory_bytes(dims: dict, dtype: str, batch_size: int, seq_len: int) -> int:
    """The implementation's weights in its dtype + its static KV cache: a floor for the run (the fp32 reference
    is left out, since it may be offloaded)."""
    from .model.registry import architecture
    moe = architecture(dims["model_type"]).moe
    mlp = 3 * dims["hidden"] * (dims["intermediate"] * (dims["experts"] if moe else 1) + dims["shared"])
    params = dims["vocab"] * dims["hidden"] * (1 if dims["tied"] else 2) + dims["layers"] * (
        dims["hidden"] * (2 * dims["heads"] + 2 * dims["kv_heads"]) * dims["head_dim"] + mlp)
    kv = 2 * dims["layers"] * batch_size * dims["kv_heads"] * dims["head_dim"] * seq_len * DTYPE_BYTES[dtype]
    return params * DTYPE_BYTES[dtype] + kv


def check_memory(dims: dict, dtype: str, batch_size: int, seq_len: int, device: str = "cpu") -> None:
    """Refuse a CPU run whose weights and KV cache alone exceed the memory available now."""
    if device != "cpu":
        return
    need = run_memory_bytes(dims, dtype, batch_size, seq_len)
    have = available_memory_bytes()
    if have is not None and need > have:
        raise BadInput(f"--seq-len {seq_len} with --batch-size {batch_size} needs at least {gib(need)} of memory "
                       f"(weights + KV cache); {gib(have)} is available: lower --seq-len or --batch-size")


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


# ----- results ---------------------------------------------------------------------------------------------------

def results_dir(path: Path | None, need_bytes: int = 0) -> Path | None:
    """Refuse a results folder that cannot take the run, before any work: not a folder, not writable, too full."""
    if path is None:
        return None
    path = output_dir(path, "--results-dir")
    existing = path
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    need = need_bytes + RESULTS_SLACK_BYTES
    if free < need:
        raise BadInput(f"--results-dir {path} has {free >> 20} MiB free, the run needs about {need >> 20} MiB: "
                       f"free space or choose another folder")
    return path


def output_dir(path: Path, option: str = "--out") -> Path:
    """A folder a command writes into: an existing file, or a place that cannot be written, is refused."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BadInput(f"{option} {path} is an existing file: give a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise BadInput(f"{option} {path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadInput(f"{option} {path} is not writable ({existing} denies it): choose another folder")
    return path


def output_file(path: Path, option: str) -> Path:
    """A file a command will write: refused when it is a folder or its folder cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{option} {path} is a folder: give a file name")
    output_dir(path.parent if str(path.parent) else Path("."), option)
    return path


# ----- typed inputs (granite_bench/schemas.py: one pydantic schema per file kind and for the numeric options) ------

def typed(schema, data, where: str):
    """`data` checked against a schemas.py schema; BadInput with its one line when it does not fit."""
    from .schemas import SchemaError, check
    try:
        return check(schema, data, where)
    except SchemaError as err:
        raise BadInput(str(err)) from None


def option_ranges(command: str, **values) -> None:
    """Every numeric option of a command within its range (schemas.OPTION_RANGES); None = not given."""
    from .schemas import SchemaError, options
    try:
        options(command, **values)
    except SchemaError as err:
        raise BadInput(str(err)) from None


def parity_suite(path: Path) -> dict:
    """A parity suite file (suites/parity/*.yaml or the user's) whose every field has the right type and range."""
    from .schemas import ParitySuite
    data = suite_file(path)
    typed(ParitySuite, data, f"suite file {path}")
    return data


def perf_suite(path: Path) -> dict:
    from .schemas import PerfSuite
    data = suite_file(path)
    typed(PerfSuite, data, f"perf suite file {path}")
    return data


def model_shape(config: dict, where: str) -> None:
    """A model's config (a preset's shape or a checkpoint's config.json) the implementation can build: a vocabulary
    of at least two tokens, hidden size divisible by the heads, query heads a multiple of the KV heads, ..."""
    from .schemas import GraniteShape
    typed(GraniteShape, config, str(where))


def known_prompt_lengths(prompts: list, model: str, folder: Path | None) -> list[tuple[int, bool] | None]:
    """(tokens, exact) per prompt, found without torch or transformers: token-id lists and random prompts exactly;
    texts as their UTF-8 bytes when the model has no tokenizer (the byte-level encoding parity uses then), or as a
    lower bound from the checkpoint's tokenizer.json read by `tokenizers` (the tokens without special ones); None
    where neither is possible (checked after tokenising)."""
    from .schemas import prompt_length
    folder = Path(folder) if folder is not None else None
    has_tokenizer = folder is not None and any((folder / n).exists() for n in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = fast_tokenizer(folder / "tokenizer.json") if has_tokenizer else None
    lengths = []
    for prompt in prompts:
        known = prompt_length(prompt)
        if known is not None:
            lengths.append((known, True))
        elif not has_tokenizer:
            lengths.append((len(prompt.encode("utf-8")), True))
        elif tokenizer is not None:
            lengths.append((len(tokenizer.encode(prompt, add_special_tokens=False).ids), False))
        else:
            lengths.append(None)
    return lengths


def fast_tokenizer(path: Path):
    """The `tokenizers` Tokenizer of a tokenizer.json (light: no transformers), or None when there is none."""
    if not path.exists():
        return None
    try:
        from tokenizers import Tokenizer
        return Tokenizer.from_file(str(path))
    except Exception:  # noqa: BLE001 - an unreadable tokenizer is left to transformers, after torch loads
        return None


def prompts_fit(lengths: list[tuple[int, bool] | None], largest_bucket: int, seq_len: int, num_tokens: int) -> None:
    """Refuse a prompt the static shapes cannot hold (the same rule the runtime applies after tokenising)."""
    for i, known in enumerate(lengths):
        if known is None:
            continue
        length, exact = known
        tokens = f"{length} tokens" if exact else f"at least {length} tokens"
        if length > largest_bucket:
            raise BadInput(f"prompt {i} has {tokens}, more than the largest bucket ({largest_bucket}): "
                           f"raise --buckets/--seq-len or shorten it")
        if length + num_tokens > seq_len:
            raise BadInput(f"prompt {i} ({tokens}) + {num_tokens} new tokens exceeds --seq-len {seq_len}: "
                           f"raise --seq-len or lower --num-tokens")


def reference_memory_floor(config: dict) -> int:
    """Bytes the fp32 HF reference keeps in memory at the least under --max-memory: the tensors outside the decoder
    layers (embedding, final norm, an untied LM head) and one decoder layer (the others stream from disk), sized
    from the architecture's own tensor list (expected_tensor_shapes, so MoE experts count)."""
    import math
    total = 0
    for names, tensor_shape in expected_tensor_shapes(config).items():
        layer = names[0].split(".")[2] if names[0].startswith("model.layers.") else None
        if layer in (None, "0"):
            total += math.prod(tensor_shape)
    return 4 * total


def memory_budget(text: str | None, config: dict) -> int | None:
    """--max-memory as bytes: a size, and one that holds what the reference cannot offload; None when not given."""
    from .schemas import SchemaError, memory_bytes
    try:
        budget = memory_bytes(text)
    except SchemaError as err:
        raise BadInput(str(err)) from None
    if budget is not None and budget < reference_memory_floor(config):
        raise BadInput(f"--max-memory {text} cannot hold the fp32 reference's embedding/head plus one decoder layer: "
                       f"give at least {mib(reference_memory_floor(config))}")
    return budget


def mib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def device_here(device: str, tp: int = 1) -> str:
    """Refuse --device cuda / neuron where that hardware or its packages are absent, without importing torch."""
    from .runtime.hardware import cuda_problem, neuron_problem
    problem = cuda_problem(tp) if device == "cuda" else neuron_problem() if device == "neuron" else None
    if problem:
        raise BadInput(problem)
    return device


def eval_tasks(names: list[str] | None) -> None:
    """Refuse an eval task that is neither one of suites/eval nor an lm-eval task (None: the default tasks)."""
    if not names:
        return
    from .accuracy.tasks import TaskError, check_task_names  # yaml and a text scan of lm-eval's task files
    try:
        check_task_names(names)
    except TaskError as err:
        raise BadInput(str(err)) from None


def goldens_match(directory: Path | None, num_prompts: int, num_tokens: int, folder: Path | None) -> None:
    """Refuse, before torch loads, a --goldens folder whose golden.json says it was made for another number of
    prompts or tokens, or (for a checkpoint folder) another checkpoint. The rest of the key (the prompts' token ids,
    a random-weight preset's files) needs the tokenizer or the weights made by torch, and is checked when the goldens
    are loaded; so is a golden.json that cannot be read here."""
    if directory is None:
        return
    try:
        key = json.loads((Path(directory) / "golden.json").read_text())["key"]
        stored = {"num_prompts": key["num_prompts"], "num_tokens": key["num_tokens"],
                  "checkpoint_fingerprint": key["checkpoint_fingerprint"]}
    except (OSError, ValueError, KeyError, TypeError):
        return
    wanted = {"num_prompts": num_prompts, "num_tokens": num_tokens}
    if folder is not None:
        from .reference.fingerprint import content_fingerprint  # hashlib + safetensors headers, no torch
        wanted["checkpoint_fingerprint"] = content_fingerprint(Path(folder))
    what = {"checkpoint_fingerprint": "another checkpoint", "num_prompts": "other prompts",
            "num_tokens": "another number of tokens"}
    for name, value in wanted.items():
        if stored[name] != value:
            raise BadInput(f"goldens in {directory} were made for {what[name]} ({name.replace('_', ' ')} "
                           f"{short(stored[name])} != {short(value)}): run `granite-bench reference` with the same "
                           f"--model/--prompts/--num-tokens and --out {directory}")


def short(value):
    """A fingerprint by its first 12 hex digits; anything else as it is."""
    return value[:12] if isinstance(value, str) else value
