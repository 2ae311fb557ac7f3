"""The perf grid: what one point is, how a suite file and the command line expand into points, shards, point keys.

A point is one (dtype, TP degree, compile mode, batch size, context bucket) of one model, with a fixed output length.
Its key is a hash of everything that defines the measurement (not of how many rounds are taken), so a stored point
is found again by a later sweep, on any shard.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

DTYPE_NAMES = ("float32", "bfloat16", "float16")
BASELINES = ("hf_eager", "hf_static")                 # the default HF side of a sweep
# HF's MoE experts implementations, for MoE models (hf_eager runs HF's eager experts loop)
MOE_BASELINES = ("hf_grouped_mm", "hf_batched_mm")


class GridError(ValueError):
    """A grid, suite or shard the user must change (one line)."""


@dataclass(frozen=True)
class PerfPoint:
    model: str
    layers: int | None
    dtype: str
    device: str
    tp: int
    compile: bool
    batch_size: int
    bucket: int              # context-encoding bucket
    prompt_len: int          # tokens per prompt (every row the same), <= bucket
    new_tokens: int          # fixed output length: 1 context encoding + new_tokens - 1 decode steps
    seq_len: int             # static KV-cache length the runner is built with

    @property
    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def runner_group(self) -> tuple:
        """Points with the same group share one built runner (it holds every context bucket of the grid)."""
        return (self.model, self.layers, self.dtype, self.device, self.tp, self.compile, self.batch_size, self.seq_len)

    @property
    def label(self) -> str:
        mode = "compiled" if self.compile else "eager"
        return f"{self.dtype} tp{self.tp} {mode} batch {self.batch_size} bucket {self.bucket}"

    def columns(self) -> dict:
        return {"point_key": self.key, **{("compiled" if k == "compile" else k): v for k, v in asdict(self).items()}}


@dataclass
class GridSpec:
    model: str = "tiny-gqa"
    layers: int | None = None
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    device: str = "cpu"
    tp: list[int] = field(default_factory=lambda: [1])
    compile: list[bool] = field(default_factory=lambda: [False])
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    buckets: list[int] = field(default_factory=lambda: [32, 128])
    new_tokens: int = 32
    prompt_fill: float = 1.0          # prompt length as a share of its bucket
    seq_len: int | None = None        # default: next power of two >= largest bucket + new_tokens
    rounds: int = 5                   # timed generations per implementation and point
    warmup: int = 1                   # untimed generations first (compilation happens here)
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    threads: int | None = None        # torch intra-op threads (default: the cores available)

    def validate(self) -> "GridSpec":
        for name in ("tp", "batch_sizes", "buckets"):
            values = getattr(self, name)
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise GridError(f"perf grid '{name}' needs positive integers, got {values!r}")
        for name in ("new_tokens", "rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GridError(f"perf option '{name}' must be a positive integer, got {value!r}")
        if self.new_tokens < 2:
            raise GridError("--new-tokens must be at least 2 (one context encoding + at least one decode step)")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise GridError(f"perf option 'warmup' must be >= 0, got {self.warmup!r}")
        bad = [d for d in self.dtypes if d not in DTYPE_NAMES]
        if not self.dtypes or bad:
            raise GridError(f"--dtype takes {', '.join(DTYPE_NAMES)} (comma-separated), got {self.dtypes!r}")
        bad = [b for b in self.baselines if b not in BASELINES + MOE_BASELINES]
        if bad:
            raise GridError(f"unknown baseline {bad[0]!r}: choose from {', '.join(BASELINES + MOE_BASELINES)}")
        if not 0 < self.prompt_fill <= 1:
            raise GridError(f"prompt_fill must be in (0, 1], got {self.prompt_fill!r}")
        if self.layers is not None and (not isinstance(self.layers, int) or self.layers < 1):
            raise GridError(f"--layers must be a positive integer, got {self.layers!r}")
        if self.seq_len is not None and self.seq_len < max(self.buckets) + self.new_tokens:
            raise GridError(f"--seq-len {self.seq_len} cannot hold the largest bucket {max(self.buckets)} + "
                            f"{self.new_tokens} new tokens: raise it or lower --buckets/--new-tokens")
        return self

    def cache_length(self) -> int:
        if self.seq_len is not None:
            return self.seq_len
        need = max(self.buckets) + self.new_tokens
        return 1 << (need - 1).bit_length()

    def points(self) -> list[PerfPoint]:
        """Every point, ordered so that points sharing a runner (and an HF model) are neighbours."""
        self.validate()
        seq_len = self.cache_length()
        points = []
        for dtype in self.dtypes:
            for tp in self.tp:
                for compiled in self.compile:
                    for batch in self.batch_sizes:
                        for bucket in sorted(self.buckets):
                            prompt = max(1, min(bucket, round(self.prompt_fill * bucket)))
                            points.append(PerfPoint(self.model, self.layers, dtype, self.device, tp, bool(compiled),
                                                    batch, bucket, prompt, self.new_tokens, seq_len))
        return points


SUITE_KEYS = {"model", "layers", "dtype", "dtypes", "device", "tp", "compile", "batch_sizes", "buckets",
              "new_tokens", "prompt_fill", "seq_len", "rounds", "warmup", "baselines", "threads", "description"}


def as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def spec_from_suite(data: dict) -> GridSpec:
    """A GridSpec from a suite mapping (suites/perf/*.yaml); scalars are accepted where lists are expected."""
    unknown = sorted(set(data) - SUITE_KEYS)
    if unknown:
        raise GridError(f"perf suite has unknown key '{unknown[0]}' (known: {', '.join(sorted(SUITE_KEYS))})")
    spec = GridSpec()
    for name in ("model", "layers", "device", "new_tokens", "prompt_fill", "seq_len", "rounds", "warmup", "threads"):
        if name in data:
            setattr(spec, name, data[name])
    dtypes = data.get("dtypes", data.get("dtype"))
    if dtypes is not None:
        spec.dtypes = [str(d) for d in as_list(dtypes)]
    for name in ("tp", "batch_sizes", "buckets", "baselines"):
        if name in data:
            setattr(spec, name, as_list(data[name]) if data[name] is not None else [])
    if "compile" in data:
        spec.compile = [bool(v) for v in as_list(data["compile"])]
    return spec


def with_overrides(spec: GridSpec, **overrides) -> GridSpec:
    """Command-line values (None = keep the suite's)."""
    return replace(spec, **{k: v for k, v in overrides.items() if v is not None}).validate()


# -- shards ----------------------------------------------------------------------------------------------------
def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/n' (1-based) -> (i, n); None -> (1, 1)."""
    if text is None:
        return 1, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise GridError(f"--shard takes i/n, e.g. --shard 2/4, got {text!r}") from None
    if count < 1 or not 1 <= index <= count:
        raise GridError(f"--shard {text}: need 1 <= i <= n")
    return index, count


def shard_points(points: list, index: int, count: int) -> list:
    """Shard `index` of `count`: a contiguous slice of the ordered grid (so shards keep runner groups together).
    The slices of 1..count partition the grid exactly."""
    total = len(points)
    return points[(index - 1) * total // count: index * total // count]
