"""One static graph per (phase, bucket).

Eager: the model's entry points called with bucket-shaped inputs. Compiled: each (phase, bucket) is compiled once
with torch.compile (full graph, static shapes) and reused; compilations are counted per graph, and a recompilation
or a graph break fails the run with the reason: the static-shape guarantee Neuron's compiler needs, checked without
Neuron. Compile time per graph is kept for the results.
"""

from __future__ import annotations

import time
from collections import Counter

import torch


class RecompilationError(RuntimeError):
    """A static graph was compiled more than once."""


class GraphSet:
    def __init__(self, model, compile: bool = False):
        self.model = model
        self.compile = compile
        self.compile_counts: Counter = Counter()
        self.compile_seconds: dict[tuple[str, int], float] = {}
        self.calls: Counter = Counter()
        self._compiled: dict[tuple[str, int], object] = {}
        self._current: tuple[str, int] | None = None

    def _backend(self, gm, example_inputs):
        key = self._current
        self.compile_counts[key] += 1
        if self.compile_counts[key] > 1:
            raise RecompilationError(f"graph {key[0]}[{key[1]}] recompiled: an input changed shape, dtype or a "
                                     f"guarded value between calls of one static bucket")
        from torch._inductor.compile_fx import compile_fx
        return compile_fx(gm, example_inputs)

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

    def _run(self, phase: str, bucket: int, eager, args, capture):
        key = (phase, bucket)
        self.calls[key] += 1
        if not self.compile or capture is not None:
            return eager(*args, capture=capture) if capture is not None else eager(*args)
        self._current = key
        first = key not in self.compile_seconds
        start = time.perf_counter()
        out = self._graph(phase, bucket)(*args)
        if first:
            self.compile_seconds[key] = time.perf_counter() - start
        return out

    def context_encoding(self, bucket: int, input_ids, attention_mask, capture=None):
        return self._run("context_encoding", bucket, self.model.context_encoding, (input_ids, attention_mask), capture)

    def token_generation(self, kv_len: int, input_ids, positions, capture=None):
        return self._run("token_generation", kv_len, self.model.token_generation, (input_ids, positions, kv_len),
                         capture)
