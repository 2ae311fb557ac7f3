"""Typed inputs: one pydantic schema per kind of file a user hands the harness, and one per command's numeric
options, checked before torch or transformers load (this module imports pydantic and yaml only).

File kinds: parity suites (suites/parity/*.yaml), perf suites (suites/perf/*.yaml), the eval thresholds
(suites/eval/thresholds.yaml), prompts files (--prompts), tolerance profiles (suites/parity/tolerances.yaml) and
model presets (suites/models/*.yaml, whose `config` is checked as a Granite shape, as is a checkpoint's config.json).

`check(schema, data, where)` returns the validated model or raises `SchemaError` with one line naming the file,
the field and what to give instead; the first problem is named, and how many more there are.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (BaseModel, ByteSize, ConfigDict, Discriminator, Field, StrictBool, StrictInt, StrictStr, Tag,
                      TypeAdapter, ValidationError, create_model, model_validator)

# A prompt longer than this is refused whatever the buckets: 1M tokens of one prompt is past any Granite context
# (131072 for the 3.1+ models) and its position rows alone would take GBs.
MAX_PROMPT_TOKENS = 1 << 20
# A gate campaign of more comparisons than this runs for days; the option is a count, not a duration.
MAX_COMPARISONS = 10_000


class SchemaError(ValueError):
    """A file or option that does not fit its schema: one line, exit code 2."""


Positive = Annotated[StrictInt, Field(ge=1)]
NonNegative = Annotated[StrictInt, Field(ge=0)]
TokenId = Annotated[StrictInt, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, allow_inf_nan=False)]
NonEmptyText = Annotated[StrictStr, Field(min_length=1)]


class Strict(BaseModel):
    """Unknown keys are refused: a misspelt option must not be silently ignored."""
    model_config = ConfigDict(extra="forbid")


# ----- prompts -----------------------------------------------------------------------------------------------------

class RandomPrompt(Strict):
    """{random_tokens: N, seed: S}: N seeded random token ids (long-context suites)."""
    random_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_PROMPT_TOKENS)]
    seed: NonNegative = 0


def prompt_kind(value: Any) -> str | None:
    """Which of the three prompt forms a value is written as (pydantic's discriminator: None = none of them)."""
    return {str: "text", list: "tokens", dict: "random"}.get(type(value))


Prompt = Annotated[Union[Annotated[NonEmptyText, Tag("text")],
                         Annotated[list[TokenId], Field(min_length=1, max_length=MAX_PROMPT_TOKENS), Tag("tokens")],
                         Annotated[RandomPrompt, Tag("random")]],
                   Discriminator(prompt_kind, custom_error_type="prompt_form",
                                 custom_error_message="a prompt is a text, a list of token ids or "
                                                      "{random_tokens: N, seed: S}")]
PromptList = Annotated[list[Prompt], Field(min_length=1)]


class PromptsMapping(Strict):
    prompts: PromptList


PromptsFile = Annotated[Union[Annotated[PromptList, Tag("list")], Annotated[PromptsMapping, Tag("mapping")]],
                        Discriminator(lambda value: "mapping" if type(value) is dict else "list")]


def prompt_length(prompt) -> int | None:
    """Tokens of a checked prompt (as written: text, id list or random-prompt mapping) when known without a
    tokenizer, else None (a text)."""
    if isinstance(prompt, dict):
        return prompt["random_tokens"]
    return len(prompt) if isinstance(prompt, list) else None


# ----- suites ------------------------------------------------------------------------------------------------------

class ParitySuite(Strict):
    model: Optional[NonEmptyText] = None
    dtype: Optional[NonEmptyText] = None
    batch_size: Optional[Positive] = None
    seq_len: Optional[Positive] = None
    buckets: Optional[Annotated[list[Positive], Field(min_length=1)]] = None
    num_tokens: Optional[Positive] = None
    layers: Optional[Positive] = None
    prompts: Optional[PromptList] = None
    description: Optional[str] = None


def one_or_many(item):
    """A perf grid axis: one value or a list of them (the suites write both)."""
    return Union[item, Annotated[list[item], Field(min_length=1)]]


class PerfSuite(Strict):
    model: Optional[NonEmptyText] = None
    layers: Optional[Positive] = None
    dtype: Optional[one_or_many(NonEmptyText)] = None
    dtypes: Optional[one_or_many(NonEmptyText)] = None
    device: Optional[Literal["cpu", "cuda", "neuron"]] = None
    tp: Optional[one_or_many(Positive)] = None
    compile: Optional[one_or_many(StrictBool)] = None
    batch_sizes: Optional[one_or_many(Positive)] = None
    buckets: Optional[one_or_many(Positive)] = None
    new_tokens: Optional[Annotated[StrictInt, Field(ge=2)]] = None
    prompt_fill: Optional[Annotated[float, Field(gt=0, le=1)]] = None
    seq_len: Optional[Positive] = None
    rounds: Optional[Positive] = None
    warmup: Optional[NonNegative] = None
    baselines: Optional[one_or_many(NonEmptyText)] = None  # names checked by perf/grid.py, which knows them
    threads: Optional[Positive] = None
    description: Optional[str] = None


class EvalThresholds(Strict):
    """One dtype's lines in suites/eval/thresholds.yaml."""
    max_abs_delta_loglik: Fraction
    mean_abs_delta_loglik: Fraction
    min_argmax_agreement: Annotated[float, Field(ge=0, le=1)]
    min_generation_agreement: Annotated[float, Field(ge=0, le=1)]
    max_metric_difference: Fraction
    max_perplexity_ratio: Fraction


EvalThresholdsFile = dict[Literal["float32", "bfloat16", "float16"], EvalThresholds]


# ----- tolerance profiles ------------------------------------------------------------------------------------------

TopK = Union[Literal["all", "none"], Annotated[StrictInt, Field(ge=1)]]


class ToleranceEntry(Strict):
    tol_map: Annotated[dict[TopK, tuple[Fraction, Fraction]], Field(min_length=1)]
    divergence_tolerance: Fraction
    hidden_noise_rtol: Optional[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = None
    localisation_rtol: Optional[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = None
    framework_factor: Optional[Annotated[float, Field(ge=1, allow_inf_nan=False)]] = None

    @model_validator(mode="after")
    def has_localisation_threshold(self):
        if self.hidden_noise_rtol is None and self.localisation_rtol is None:
            raise ValueError("give hidden_noise_rtol (measured noise) or localisation_rtol (the threshold itself)")
        return self


class TolerancesFile(Strict):
    profiles: Annotated[dict[NonEmptyText, ToleranceEntry], Field(min_length=1)]


# ----- model shapes and presets ------------------------------------------------------------------------------------

class GraniteShape(BaseModel):
    """The numbers of a Granite-family config (a preset's `config`, a checkpoint's config.json) the implementation
    builds tensors from, typed: whole positive numbers where counts are meant (never '4096', 4096.0 or true). Other
    keys pass through; what the architecture cannot run (hidden size the heads do not divide, a vocabulary of one,
    experts) is the registry's to say (model/registry.py config_problems, called by preflight.check_model)."""
    model_config = ConfigDict(extra="allow")
    vocab_size: Positive = 32000
    hidden_size: Positive = 4096
    intermediate_size: Positive = 11008
    num_hidden_layers: Positive = 32
    num_attention_heads: Positive = 32
    num_key_value_heads: Optional[Positive] = None
    head_dim: Optional[Positive] = None
    max_position_embeddings: Optional[Positive] = None
    rms_norm_eps: Optional[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = None
    tie_word_embeddings: Optional[StrictBool] = None


class ModelPreset(Strict):
    name: Optional[NonEmptyText] = None
    description: Optional[str] = None
    model_type: Optional[NonEmptyText] = None
    config: Optional[GraniteShape] = None
    init: Optional[dict[str, Any]] = None
    checkpoint: Optional[NonEmptyText] = None
    checkpoint_dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None
    max_shard_size: Optional[Union[NonEmptyText, Positive]] = None

    @model_validator(mode="after")
    def config_or_checkpoint(self):
        if (self.config is None) == (self.checkpoint is None):
            raise ValueError("give 'config' (a shape with random weights) or 'checkpoint' (a folder), one of them")
        return self


# ----- command options ---------------------------------------------------------------------------------------------

MemorySize = Annotated[ByteSize, Field(gt=0)]


def memory_bytes(text: str | None, option: str = "--max-memory") -> int | None:
    """'8GiB', '512MiB', '8GB', '1000000' -> bytes; SchemaError naming the option for anything else."""
    if text is None:
        return None
    try:
        return int(TypeAdapter(MemorySize).validate_python(str(text).strip()))
    except ValidationError:
        raise SchemaError(f"{option} {text!r} is not a size: give e.g. 8GiB, 512MiB or 8GB") from None


def options(where: str, **values) -> dict:
    """Check a command's numeric options against OPTION_RANGES (None = not given); returns them unchanged.
    Names are the options' Python names (max_memory for --max-memory)."""
    model = _options_model(tuple(sorted(values)))
    try:
        model.model_validate(values)
    except ValidationError as err:
        raise SchemaError(error_line(err, where, option_names=True)) from None
    return values


def _options_model(names: tuple[str, ...]):
    if names not in _OPTION_MODELS:
        _OPTION_MODELS[names] = create_model("Options", __config__=ConfigDict(extra="forbid"),
                                             **{n: (Optional[OPTION_RANGES[n]], None) for n in names})
    return _OPTION_MODELS[names]


_OPTION_MODELS: dict = {}
Probability = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
Slowdown = Annotated[float, Field(ge=0, lt=5, allow_inf_nan=False)]  # a fraction of a decode step (0.1 = 10%)
Count = Annotated[StrictInt, Field(ge=0, le=MAX_COMPARISONS)]
# Every numeric option of every command, by its Python name: the one place their ranges are written.
OPTION_RANGES = {
    "batch_size": Positive, "seq_len": Positive, "num_tokens": Positive, "layers": Positive, "tp": Positive, "moe_ep": Positive,
    "threads": Positive, "rounds": Positive, "warmup": NonNegative, "new_tokens": Positive,
    "num_fewshot": NonNegative, "limit": Annotated[float, Field(gt=0, allow_inf_nan=False)],
    "trials": Annotated[StrictInt, Field(ge=6)], "reps": Annotated[StrictInt, Field(ge=1, le=200)],
    "floor": Annotated[float, Field(ge=0, lt=5, allow_inf_nan=False)], "alpha": Probability, "looks": Positive,
    "error_growth": Annotated[float, Field(gt=1, allow_inf_nan=False)], "timing_layers": Positive,
    "null": Count, "per_level": Count, "prefill_level": Slowdown,
    "levels": Annotated[list[Slowdown], Field(min_length=1)],
    "resamples": Annotated[StrictInt, Field(ge=1, le=1_000_000)],
}


# ----- checking and the one-line message ---------------------------------------------------------------------------

def check(schema, data, where: str):
    """`data` validated against `schema` (a model class or a type); SchemaError with one line on failure."""
    try:
        return TypeAdapter(schema).validate_python(data)
    except ValidationError as err:
        raise SchemaError(error_line(err, where)) from None


def read_yaml(path, schema, what: str):
    """A YAML file's data (as written) after checking it against `schema`; SchemaError with one line when it is not
    YAML or does not fit. `what` names the file kind in the message ('preset', 'tolerance profiles')."""
    import yaml
    try:
        data = yaml.safe_load(open(path, encoding="utf-8").read())
    except yaml.YAMLError as err:
        raise SchemaError(f"{what} {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    check(schema, data, f"{what} {path}")
    return data


def error_line(err: ValidationError, where: str, option_names: bool = False) -> str:
    """The first problem of a ValidationError in one line: '<where>: <field> must be <rule>, got <value>' for a
    value out of type or range, '<where>: <field>: <reason>' otherwise (+ how many more problems there are).
    Options are named as typed (--num-tokens) and need no <where>."""
    errors = err.errors(include_url=False)
    first = min(errors, key=lambda e: len(e["loc"]))  # the error nearest the top (a union's branches go deeper)
    field = field_path(first["loc"], option_names)
    rule = expected(first)
    if rule is not None:
        text = f"{field or 'the value'} must be {rule}, got {shown(first.get('input'))}"
    elif first["type"] == "extra_forbidden":
        text = f"{field}: unknown field (check its spelling or remove it)"
    elif first["type"] == "missing":
        text = f"{field} is missing"
    else:
        text = f"{field + ': ' if field else ''}{first['msg'].removeprefix('Value error, ')}"
        if first["type"] not in ("value_error", "assertion_error"):
            text += f" (got {shown(first.get('input'))})"
    more = f"; {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''}" if len(errors) > 1 else ""
    return f"{text}{more}" if option_names else f"{where}: {text}{more}"


def expected(error: dict) -> str | None:
    """What a type or range error asks for, in words ('a positive integer', 'at most 1048576'), else None."""
    kind, ctx = error["type"], error.get("ctx") or {}
    whole = isinstance(error.get("input"), int) and not isinstance(error.get("input"), bool)
    if kind == "greater_than_equal":
        bound = ctx["ge"]
        if bound == 1 and whole:
            return "a positive integer"
        return "0 or more" if bound == 0 else f"at least {bound}"
    if kind == "greater_than":
        return "positive" if ctx["gt"] == 0 else f"above {ctx['gt']}"
    words = {"less_than_equal": f"at most {ctx.get('le')}", "less_than": f"below {ctx.get('lt')}",
             "finite_number": "a finite number", "int_type": "an integer", "int_parsing": "an integer",
             "int_from_float": "an integer", "float_type": "a number", "float_parsing": "a number",
             "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "a text",
             "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
             "too_short": f"a list of at least {ctx.get('min_length')} item(s)",
             "too_long": f"a list of at most {ctx.get('max_length')} items",
             "string_too_short": "a non-empty text", "literal_error": f"one of {ctx.get('expected')}"}
    return words.get(kind)


def field_path(loc: tuple, option_names: bool = False) -> str:
    """('list', 1, 'tokens', 0) -> 'prompt 1, token 0'; ('config', 'vocab_size') -> 'config.vocab_size';
    option names as typed (--num-tokens)."""
    parts, previous, nested = [], None, False
    for item in loc:
        if isinstance(item, int):
            noun = {"tokens": "token", "list": "prompt", "prompts": "prompt"}.get(previous, "item")
            if parts and parts[-1] == "prompts":
                parts.pop()
            parts.append(f"{noun} {item}")
            nested = False
        elif option_names:
            parts.append("--" + str(item).replace("_", "-"))
        elif item not in BRANCH_TAGS and not str(item).startswith(("function-", "union[", "list[")):
            if nested:
                parts[-1] += f".{item}"
            else:
                parts.append(str(item))
            nested = True
        previous = item
    return ", ".join(parts)


# Union branch names pydantic puts in an error's location: the schema's own tags, not fields a user wrote.
BRANCH_TAGS = ("text", "tokens", "random", "list", "mapping")


def shown(value) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


__all__ = ["SchemaError", "check", "read_yaml", "options", "memory_bytes", "ParitySuite", "PerfSuite", "PromptsFile",
           "PromptList", "TolerancesFile", "ModelPreset", "GraniteShape", "EvalThresholdsFile", "prompt_length"]
