"""`neuron_config.json`: the static shapes a compiled Granite is built for.

Mirrors the fields NxDI/optimum-neuron keep in their NeuronConfig. Every value is validated on load and a bad
value raises `NeuronConfigError` naming the field, so a user learns what to change in one line.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

NEURON_CONFIG_NAME = "neuron_config.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MIN_BUCKET = 128


class NeuronConfigError(ValueError):
    """A neuron_config field has a value the model cannot be built with."""


def autobucket(max_length: int, min_length: int = MIN_BUCKET) -> list[int]:
    """Powers of two from `min_length` up to (not including) `max_length`, then `max_length` itself.

    Same shape as NxDI's generated buckets, without its rounding quirk that drops 128 for maxima 129-180.
    """
    buckets = []
    size = min_length
    while size < max_length:
        buckets.append(size)
        size *= 2
    return buckets + [max_length]


def pick_bucket(buckets: list[int], length: int, what: str) -> int:
    """The smallest bucket that holds `length` positions."""
    for bucket in buckets:
        if length <= bucket:
            return bucket
    raise BucketError(f"{what} of {length} tokens exceeds the largest bucket ({buckets[-1]}): "
                      f"raise --seq-len/--buckets or shorten the input")


class BucketError(ValueError):
    """An input does not fit in any compiled bucket."""


@dataclass
class NeuronConfig:
    batch_size: int = 1
    sequence_length: int = 256
    max_context_length: int | None = None
    tp_degree: int = 1
    torch_dtype: str = "float32"
    context_encoding_buckets: list[int] | None = None
    token_generation_buckets: list[int] | None = None
    fused_qkv: bool = True
    output_logits: bool = True
    moe_ep_degree: int = 1          # expert parallelism among the tp_degree ranks (MoE models; divides tp and E)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("batch_size", "sequence_length", "max_context_length", "tp_degree", "moe_ep_degree"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise NeuronConfigError(f"neuron_config field '{name}' must be an integer, got {value!r}")
        for name in ("context_encoding_buckets", "token_generation_buckets"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, list) or
                                      any(isinstance(b, bool) or not isinstance(b, int) for b in value)):
                raise NeuronConfigError(f"neuron_config field '{name}' must be a list of integers, got {value!r}")
        if self.max_context_length is None:
            self.max_context_length = self.sequence_length
        if self.context_encoding_buckets is None:
            self.context_encoding_buckets = autobucket(self.max_context_length)
        if self.token_generation_buckets is None:
            self.token_generation_buckets = autobucket(self.sequence_length)
        self.context_encoding_buckets = sorted(self.context_encoding_buckets)
        self.token_generation_buckets = sorted(self.token_generation_buckets)
        self.validate()

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.torch_dtype]

    def validate(self) -> None:
        for name in ("batch_size", "sequence_length", "max_context_length", "tp_degree", "moe_ep_degree"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise NeuronConfigError(f"neuron_config field '{name}' must be a positive integer, got {value!r}")
        if self.max_context_length > self.sequence_length:
            raise NeuronConfigError(
                f"neuron_config field 'max_context_length' ({self.max_context_length}) must not exceed "
                f"'sequence_length' ({self.sequence_length})")
        if self.tp_degree % self.moe_ep_degree:
            raise NeuronConfigError(f"neuron_config field 'moe_ep_degree' ({self.moe_ep_degree}) must divide "
                                    f"'tp_degree' ({self.tp_degree})")
        if self.torch_dtype not in DTYPES:
            raise NeuronConfigError(
                f"neuron_config field 'torch_dtype' must be one of {', '.join(DTYPES)}, got {self.torch_dtype!r}")
        for name, limit in (("context_encoding_buckets", self.max_context_length),
                            ("token_generation_buckets", self.sequence_length)):
            buckets = getattr(self, name)
            if not buckets or any(b < 1 for b in buckets) or len(set(buckets)) != len(buckets):
                raise NeuronConfigError(f"neuron_config field '{name}' must be distinct positive sizes, got {buckets}")
            if buckets[-1] > limit:
                raise NeuronConfigError(
                    f"neuron_config field '{name}' has bucket {buckets[-1]} larger than {limit} "
                    f"({'max_context_length' if name.startswith('context') else 'sequence_length'})")
        for name in ("fused_qkv", "output_logits"):
            if not isinstance(getattr(self, name), bool):
                raise NeuronConfigError(f"neuron_config field '{name}' must be true or false")

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / NEURON_CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict) -> "NeuronConfig":
        if not isinstance(data, dict):
            raise NeuronConfigError("neuron_config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise NeuronConfigError(f"neuron_config has unknown field '{unknown[0]}' (known: {', '.join(sorted(known))})")
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> "NeuronConfig":
        path = Path(path)
        if path.is_dir():
            path = path / NEURON_CONFIG_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise NeuronConfigError(f"no {NEURON_CONFIG_NAME} at {path}") from None
        except json.JSONDecodeError as err:
            raise NeuronConfigError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}") from None
        try:
            return cls.from_dict(data)
        except TypeError as err:
            raise NeuronConfigError(f"{path}: {err}") from None
