"""The framework's own error in a lower dtype: HF Transformers' GraniteForCausalLM run in bf16 (or fp16) on the same
checkpoint, teacher-forced on the goldens' prompts and greedy tokens, and measured against the fp32 goldens with
parity's own metrics and the dtype's own profile.

Why: a fixed bf16 tolerance is tuned on a few layers. At 40 layers of random bf16 weights the error accumulates, and
HF's own bf16 model leaves NxDI's 4 % top-50 tolerance on the same goldens (granite-3.1-2b full depth: 3.9-5.7 %), so
no implementation could pass it there. Parity in that dtype, given this file, judges the implementation against what
the framework itself does on the same inputs (parity/tolerances.py::calibrated) instead of against a number loosened
by hand.

Stored beside the goldens as framework-<dtype>.json (written atomically), tied to the goldens' key: a golden directory
is replaced whole when its goldens are recomputed, and a file whose key differs from its goldens is refused.
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
from pathlib import Path

import torch

from .goldens import GoldenError, PromptGolden, load_goldens

FORMAT_VERSION = 1


def framework_file(directory: Path, dtype: str) -> Path:
    return Path(directory) / f"framework-{dtype}.json"


@torch.no_grad()
def measure(model, goldens: list[PromptGolden], profile) -> list[dict]:
    """Per prompt: the profile's top-k errors (and max |Δ|) of `model` against the golden logits at every position,
    on the goldens' own teacher-forced inputs (one forward over prompt + greedy tokens); and its own free-running
    greedy tokens against the goldens' with the reference's logit gap where they first diverge (None: never), and
    per position how far its error moves the gap between the reference's top token and any other of its top 50
    (`gap_err`: the largest reference gap this dtype's error could flip there)."""
    from ..parity.metrics import greedy_comparison, position_metrics
    from .hf_reference import greedy_tokens, reference_logits
    out = []
    for g in goldens:
        logits = reference_logits(model, g.prompt + g.tokens).float()  # [L + T, V]
        metrics = position_metrics(g.logits, logits, profile)
        names = [f"err_{k}" for k in metrics["tol_keys"]] + ["max_abs_err"]
        row = {name: [float(v) for v in metrics[name]] for name in names}
        row["gap_err"] = [float(v) for v in gap_errors(g.logits, logits)]
        tokens = greedy_tokens(model, g.prompt, len(g.tokens))
        steps = g.logits[len(g.prompt) - 1:len(g.prompt) - 1 + len(g.tokens)]  # the logits that chose each token
        greedy = greedy_comparison(torch.tensor([g.tokens]), torch.tensor([tokens]), steps[None], float("inf"))[0]
        row.update(tokens=tokens, first_divergence=greedy["first_divergence"], divergence_gap=greedy["divergence_gap"])
        out.append(row)
    return out


def gap_errors(expected: torch.Tensor, actual: torch.Tensor, k: int = 50) -> torch.Tensor:
    """[N]: per position, max over the reference's top-k tokens j of |Δ(logit[top] - logit[j])|, the change the
    actual logits make to the reference's gap between its top token and j. A greedy flip at a reference gap below
    this is within the error; HF's own error in a dtype bounds what rounding alone can flip."""
    top = expected.topk(min(k, expected.shape[-1]), dim=-1).indices         # [N, k]; column 0 is the top token
    delta = (actual.float() - expected.float()).gather(-1, top)              # [N, k]
    return (delta[:, :1] - delta).abs().amax(-1)


def worst_of(prompts: list[dict]) -> dict[str, float]:
    """Worst value of each error over every position of every prompt, and the largest reference logit gap at which
    the framework's own greedy tokens diverged from the goldens' (0 when they never did)."""
    names = [name for name in prompts[0] if name.startswith("err_") or name in ("max_abs_err", "gap_err")]
    worst = {name: max(max(p[name]) for p in prompts) for name in names}
    worst["divergence_gap"] = max((p["divergence_gap"] for p in prompts if p["divergence_gap"] is not None),
                                  default=0.0)
    return worst


def compute_framework_error(model_dir: Path, directory: Path, dtype: str, max_memory: str | None = None) -> dict:
    """Run HF's model in `dtype` over the goldens in `directory` and store framework-<dtype>.json there."""
    from ..parity.tolerances import canonical_dtype, profile_for
    from .hf_reference import load_reference
    dtype = canonical_dtype(dtype)
    if dtype == "float32":
        raise GoldenError("--framework-dtype float32 is the reference itself: give bfloat16 or float16")
    key, goldens = load_goldens(directory)
    profile = profile_for(dtype)
    model = load_reference(model_dir, key["attn_implementation"], max_memory, dtype=getattr(torch, dtype))
    try:
        prompts = measure(model, goldens, profile)
    finally:
        del model
        gc.collect()
    import transformers
    doc = {"format_version": FORMAT_VERSION, "dtype": dtype, "golden_key": key, "profile": profile.name,
           "tol_map": {str(k): list(v) for k, v in profile.tol_map.items()},
           "transformers_version": transformers.__version__, "attn_implementation": key["attn_implementation"],
           "worst": worst_of(prompts), "prompts": prompts}
    write_atomically(framework_file(directory, dtype), json.dumps(doc, indent=1) + "\n")
    return doc


def write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_framework_error(directory: Path, dtype: str, key: dict) -> dict | None:
    """framework-<dtype>.json of a golden directory, None when there is none; GoldenError (one line) when it is
    corrupt or was made for other goldens."""
    path = framework_file(directory, dtype)
    if not path.exists():
        return None
    redo = f"re-create it with `granite-bench reference --framework-dtype {dtype}`"
    try:
        doc = json.loads(path.read_text())
        if doc["format_version"] != FORMAT_VERSION or doc["dtype"] != dtype:
            raise GoldenError(f"{path} has format {doc['format_version']} / dtype {doc['dtype']}: {redo}")
        stale = doc["golden_key"] != key
        worst = {name: float(value) for name, value in doc["worst"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise GoldenError(f"{path} is corrupt (not a framework error file): {redo}") from None
    if stale:
        raise GoldenError(f"{path} was measured on other goldens than the ones beside it: {redo}")
    doc["worst"] = worst
    return doc
