"""One static graph per (phase, bucket).

Eager: the model's entry points called with bucket-shaped inputs. Compiled: each (phase, bucket) is compiled once
with torch.compile (full graph, static shapes) and reused; compilations are counted per graph, and a recompilation
or a graph break fails the run with the reason: the static-shape guarantee Neuron's compiler needs, checked without
Neuron. Compile time per graph is kept for the results.

On CUDA the token-generation graphs are also captured as CUDA graphs (inductor's cudagraph trees, what
`mode="reduce-overhead"` turns on): decode is launch-bound at small batch, context encoding is not.
"""

from __future__ import annotations

import time
from collections import Counter

import torch


# What torch.compiler raises (a plain RuntimeError) when a call under the "fail_on_recompile" stance would recompile.
RECOMPILE_STANCE_MESSAGE = "fail_on_recompile"


class RecompilationError(RuntimeError):
    """A static graph was compiled more than once."""


class GraphBreakError(RuntimeError):
    """A static graph could not be captured whole (torch.compile fullgraph refused it)."""


def graph_name(key: tuple[str, int]) -> str:
    return f"{key[0]}[{key[1]}]"


def inductor_patches(device_type: str, phase: str) -> dict:
    """Inductor options per graph: CUDA graphs for token generation on CUDA, nothing special elsewhere."""
    if device_type == "cuda" and phase == "token_generation":
        return {"triton.cudagraphs": True}
    return {}


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class GraphSet:
    def __init__(self, model, compile: bool = False, device_type: str | None = None):
        self.model = model
        self.compile = compile
        self.device_type = device_type or model_device_type(model)
        self.compile_counts: Counter = Counter()
        self.compile_seconds: dict[tuple[str, int], float] = {}
        self.calls: Counter = Counter()
        self._compiled: dict[tuple[str, int], object] = {}
        self._current: tuple[str, int] | None = None

    def _backend(self, gm, example_inputs):
        key = self._current
        self.compile_counts[key] += 1
        if self.compile_counts[key] > 1:
            raise RecompilationError(f"graph {graph_name(key)} recompiled: an input changed shape, dtype or a "
                                     f"guarded value between calls of one static bucket")
        from torch._inductor.compile_fx import compile_fx
        return compile_fx(gm, example_inputs, config_patches=inductor_patches(self.device_type, key[0]) or None)

    def _graph(self, phase: str, bucket: int):
        key = (phase, bucket)
        if key not in self._compiled:
            fn = self.model.context_encoding if phase == "context_encoding" else self.model.token_generation

            # A separate function object per graph so dynamo caches each (phase, bucket) on its own.
            def graph(*args, _fn=fn):
                return _fn(*args)
            graph.__code__ = graph.__code__.replace(co_name=f"{phase}_{bucket}")
            self._compiled[key] = torch.compile(graph, backend=self._backend, fullgraph=True, dynamic=False)
        return self._compiled[key]

    def _run_compiled(self, key: tuple[str, int], args):
        """Compile on the first call of a graph; every later call runs under torch.compiler's "fail_on_recompile"
        stance, so it hits the cached graph or fails with the guard that changed."""
        self._current = key
        first = key not in self.compile_seconds
        start = time.perf_counter()
        try:
            if first:
                out = self._graph(*key)(*args)
            else:
                with torch.compiler.set_stance("fail_on_recompile"):
                    out = self._graph(*key)(*args)
        except torch._dynamo.exc.BackendCompilerFailed as err:
            inner = getattr(err, "inner_exception", None)
            if isinstance(inner, RecompilationError):
                raise inner from None
            raise
        except (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError) as err:
            raise GraphBreakError(f"graph {graph_name(key)} cannot be captured as one static graph: "
                                  f"{first_line(err)}") from None
        except RuntimeError as err:
            if RECOMPILE_STANCE_MESSAGE not in str(err):
                raise
            self.compile_counts[key] += 1
            raise RecompilationError(f"graph {graph_name(key)} would recompile: {recompile_reason(err)}") from None
        if first:
            self.compile_seconds[key] = time.perf_counter() - start
        return out

    def _run(self, phase: str, bucket: int, eager, args, capture):
        key = (phase, bucket)
        self.calls[key] += 1
        if not self.compile or capture is not None:
            return eager(*args, capture=capture) if capture is not None else eager(*args)
        return self._run_compiled(key, args)

    def context_encoding(self, bucket: int, input_ids, attention_mask, capture=None):
        return self._run("context_encoding", bucket, self.model.context_encoding, (input_ids, attention_mask), capture)

    def token_generation(self, kv_len: int, input_ids, positions, capture=None):
        return self._run("token_generation", kv_len, self.model.token_generation, (input_ids, positions, kv_len),
                         capture)

    def info(self) -> dict:
        """Plain-data summary (picklable, for the results and for TP workers to report)."""
        return {"compile": self.compile, "compile_counts": dict(self.compile_counts),
                "compile_seconds": dict(self.compile_seconds), "calls": dict(self.calls)}


def model_device_type(model) -> str:
    for param in model.parameters():
        return param.device.type
    return "cpu"


def recompile_reason(err: BaseException) -> str:
    """The guard failure lines ("- 0/0: tensor 'x' size mismatch ...") of a recompilation error, on one line."""
    lines = [line.strip() for line in str(err).splitlines()]
    reasons = [line[2:] for line in lines if line.startswith("- ")]
    return "; ".join(reasons) if reasons else first_line(err)


class GraphInfo:
    """Compile bookkeeping with GraphSet's attribute names, as reported by TP rank 0 (a snapshot)."""

    def __init__(self, info: dict | None = None):
        info = info or {}
        self.compile = bool(info.get("compile", False))
        self.compile_counts: Counter = Counter(info.get("compile_counts", {}))
        self.compile_seconds: dict = dict(info.get("compile_seconds", {}))
        self.calls: Counter = Counter(info.get("calls", {}))

    def info(self) -> dict:
        return {"compile": self.compile, "compile_counts": dict(self.compile_counts),
                "compile_seconds": dict(self.compile_seconds), "calls": dict(self.calls)}
