"""Goldens: the HF reference's outputs computed once, stored, and checked against anywhere.

A golden set holds, per prompt, everything parity reports from: the prompt ids, the reference's greedy tokens, the
fp32 logits of every position of prompt + greedy tokens (every position parity checks: context encoding and each
teacher-forced decode step) and the fp32 residual stream after every attention and MLP sub-block at every position
(what localisation compares at the first failing position). Full-vocabulary logits are stored, not a top-k summary:
parity's metrics (KL, shift removal over the whole vocabulary, top-k error maps of any k) need all of them. That is
positions x vocab x 4 bytes per prompt (a 16k-token prompt over a 49k vocabulary would be 3 GB), which is why the
long-context presets use a small vocabulary.

Layout of a golden directory (written to a temp folder beside it, then put in place whole):
    golden.json                 format version, key (what determined it), run metadata, one entry per prompt
    prompt-00000.safetensors    prompt_ids [L] int64, tokens [T] int64, logits [L+T, V] fp32,
                                hidden.<layer>.<k>.<sub-block> [L+T, X] fp32 (k: order within the layer)
    digests.json                sha256 of every file above and of the whole set, written last (golden_files.py)
The key: checkpoint content fingerprint, prompt ids (and their sha256), number of tokens, reference dtype, HF
attention implementation, transformers version. Automatic reuse looks in GRANITE_BENCH_CACHE/goldens under a
name derived from checkpoint fingerprint + prompts + num tokens, and reuses a golden only when every key field
matches; otherwise it prints why and recomputes.

Goldens prove themselves on every read: each file must match its digest, the index must list prompts and agree with
its key, the logits must hold no NaN and every greedy token must be the top token of the logits that chose it.
Anything else is corrupt goldens (GoldenError, one line naming the file, exit 2), never a parity failure of the
implementation. Goldens are written only where golden_files.check_goldens_target allows: a folder that holds
anything else is refused, never deleted.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .golden_files import (GOLDEN_FILE, GoldenError, check_goldens_target, read_digests, redo,
                           swap_into_place, verify_file, write_digests)

FORMAT_VERSION = 3   # 2: sub-blocks stored with their execution order (MoE routers, experts, shared MLPs);
                     # 3: MoE routers' raw logits too (routing near-ties)
REFERENCE_DTYPE = "float32"
# A stored greedy token must be the top token of the logits that chose it, up to this share of the row's largest
# |logit| (HF generate's cached decode and the full forward differ by rounding only).
GREEDY_TIE = 1e-4


@dataclass
class PromptGolden:
    prompt: list[int]
    tokens: list[int]                                   # the reference's greedy tokens
    logits: torch.Tensor                                # [len(prompt) + len(tokens), V] fp32
    hidden: list | None = field(default_factory=list)   # [(layer, sub-block, Tensor[L + T, X] fp32)]
    file: Path | None = None                            # stored goldens: hidden states are read from here on demand

    def residual_streams(self) -> list:
        """Every layer's residual streams at every position (in memory, or read whole from the golden file)."""
        if self.hidden is None:
            return self._read_streams(slice(None))
        return self.hidden

    def residual_streams_at(self, position: int) -> list:
        """[(layer, sub, Tensor[H])] at one position: from a golden file only that row of each stream is read (a
        full-depth 2B prompt's streams at every position are ~90 MB)."""
        if self.hidden is None:
            return self._read_streams(position)
        return [(layer, sub, hidden[position]) for layer, sub, hidden in self.hidden]

    def _read_streams(self, index) -> list:
        from safetensors import safe_open
        with safe_open(str(self.file), framework="pt") as handle:
            names = [n.split(".") for n in handle.keys() if n.startswith("hidden.")]
            order = sorted(names, key=lambda parts: (int(parts[1]), int(parts[2])))   # execution order
            return [(int(layer), sub, handle.get_slice(".".join(("hidden", layer, k, sub)))[index])
                    for _, layer, k, sub in order]


def prompts_digest(prompts: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(prompts).encode()).hexdigest()


def golden_key(fingerprint: str, prompts: list[list[int]], num_tokens: int, attn_implementation: str) -> dict:
    import transformers
    return {"format_version": FORMAT_VERSION, "checkpoint_fingerprint": fingerprint,
            "prompts_sha256": prompts_digest(prompts), "num_prompts": len(prompts), "num_tokens": int(num_tokens),
            "reference_dtype": REFERENCE_DTYPE, "attn_implementation": attn_implementation,
            "transformers_version": transformers.__version__}


def key_mismatches(stored: dict, wanted: dict, fields=None) -> list[str]:
    """Human-readable reasons the stored key differs from the wanted one ([] when it matches)."""
    reasons = []
    for name in fields or wanted:
        if stored.get(name) != wanted.get(name):
            reasons.append(f"{name.replace('_', ' ')} {_short(stored.get(name))} != {_short(wanted.get(name))}")
    return reasons


def _short(value) -> str:
    return value[:12] if isinstance(value, str) and len(value) == 64 else str(value)


# -- computing ----------------------------------------------------------------------------------------------------
def compute_goldens(reference, prompts: list[list[int]], num_tokens: int, advance=None) -> list[PromptGolden]:
    """Run the HF reference: greedy tokens, then logits and residual streams of prompt + tokens, per prompt."""
    from .hf_reference import forward_with_hidden_states, greedy_tokens
    out = []
    for prompt in prompts:
        tokens = greedy_tokens(reference, prompt, num_tokens)
        logits, hidden = forward_with_hidden_states(reference, prompt + tokens)
        out.append(PromptGolden(list(prompt), tokens, logits.float(), [(l, s, h.float()) for l, s, h in hidden]))
        if advance:
            advance(1)
    return out


# -- storing ------------------------------------------------------------------------------------------------------
def prompt_file(index: int) -> str:
    return f"prompt-{index:05d}.safetensors"


def save_goldens(goldens: list[PromptGolden], key: dict, directory: Path, metadata: dict | None = None) -> Path:
    """Write a golden directory: every file into a temp folder beside it, digests.json last, then the folder put in
    place whole (an older golden directory there is replaced atomically; a folder holding anything else is refused)."""
    from safetensors.torch import save_file
    directory = Path(directory)
    check_goldens_target(directory)
    if not goldens:
        raise GoldenError("no prompts: a golden set needs at least one prompt")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    old = None
    try:
        entries = []
        for i, g in enumerate(goldens):
            if torch.isnan(g.logits).any():
                raise GoldenError(f"the HF reference gave NaN logits for prompt {i}: no goldens were written")
            tensors = {"prompt_ids": torch.tensor(g.prompt, dtype=torch.int64),
                       "tokens": torch.tensor(g.tokens, dtype=torch.int64), "logits": g.logits.contiguous()}
            tensors.update({f"hidden.{layer}.{k}.{sub}": h.contiguous()
                            for k, (layer, sub, h) in enumerate(g.residual_streams())})
            save_file(tensors, str(tmp / prompt_file(i)), metadata={"format_version": str(FORMAT_VERSION)})
            entries.append({"file": prompt_file(i), "prompt_len": len(g.prompt), "num_tokens": len(g.tokens),
                            "positions": int(g.logits.shape[0]), "vocab": int(g.logits.shape[1])})
        doc = {"format_version": FORMAT_VERSION, "key": key, "prompts": entries, "run": metadata or {}}
        (tmp / GOLDEN_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        write_digests(tmp, [GOLDEN_FILE] + [e["file"] for e in entries])
        old = swap_into_place(tmp, directory)
    finally:
        for leftover in (tmp, old):
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)
    return directory


def read_golden_index(directory: Path) -> dict:
    """golden.json of a golden directory, checked against its digest; GoldenError (one line) when missing, corrupt,
    without digests, or listing no prompts."""
    directory = Path(directory)
    path = directory / GOLDEN_FILE
    if not directory.is_dir():
        raise GoldenError(f"goldens directory {directory} does not exist: create it with "
                          f"`granite-bench reference --model M --out {directory}`")
    if not path.exists():
        raise GoldenError(f"{directory} holds no {GOLDEN_FILE}: point --goldens at a directory written by "
                          f"`granite-bench reference --out DIR`")
    verify_file(directory, GOLDEN_FILE, read_digests(directory))
    try:
        doc = json.loads(path.read_text())
        if doc["format_version"] != FORMAT_VERSION or not isinstance(doc["prompts"], list):
            raise GoldenError(f"{path} has format version {doc['format_version']}, this granite-bench reads "
                              f"{FORMAT_VERSION}: {redo(directory)}")
        doc["key"]["checkpoint_fingerprint"]
        files = [entry["file"] for entry in doc["prompts"]]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise GoldenError(f"corrupt goldens: {path} is not a golden index: {redo(directory)}") from None
    if not files:
        raise GoldenError(f"corrupt goldens: {path} lists no prompts (a golden set checks nothing without them): "
                          f"{redo(directory)}")
    if doc["key"].get("num_prompts") != len(files):
        raise GoldenError(f"corrupt goldens: {path} lists {len(files)} prompts but its key says "
                          f"{doc['key'].get('num_prompts')}: {redo(directory)}")
    return doc


def check_prompt_golden(golden: PromptGolden, entry: dict, key: dict, directory: Path) -> None:
    """GoldenError naming the file unless the prompt's tensors agree with its index entry and key, hold no NaN, and
    each greedy token is the top token of the logits that chose it."""
    path = golden.file
    bad = None
    if golden.logits.shape[0] != len(golden.prompt) + len(golden.tokens):
        bad = "its logits do not cover prompt + tokens"
    elif len(golden.tokens) != key.get("num_tokens") or len(golden.prompt) != entry.get("prompt_len"):
        bad = "its prompt or token count differs from golden.json"
    elif torch.isnan(golden.logits).any():
        bad = f"{int(torch.isnan(golden.logits).sum())} of its logits are NaN"
    else:
        start = len(golden.prompt) - 1
        steps = golden.logits[start:start + len(golden.tokens)]                          # [T, V]
        chosen = steps.gather(-1, torch.tensor(golden.tokens)[:, None])[:, 0]            # [T]
        gaps = steps.amax(-1) - chosen
        allowed = GREEDY_TIE * steps.abs().amax(-1).clamp(min=1.0)
        if (gaps > allowed).any():
            step = int((gaps > allowed).nonzero()[0])
            bad = (f"greedy token {step} ({golden.tokens[step]}) is not the top token of its logits "
                   f"(gap {float(gaps[step]):.3g})")
    if bad is not None:
        raise GoldenError(f"corrupt goldens: {path}: {bad}: {redo(directory)}")


def load_goldens(directory: Path) -> tuple[dict, list[PromptGolden]]:
    """(key, goldens) of a golden directory, every file checked against its digest; GoldenError (one line naming
    the file) when anything is missing, corrupt or inconsistent."""
    from safetensors import safe_open
    directory = Path(directory)
    doc = read_golden_index(directory)
    digests = read_digests(directory)
    goldens = []
    for entry in doc["prompts"]:
        path = directory / entry["file"]
        verify_file(directory, entry["file"], digests)
        try:
            with safe_open(str(path), framework="pt") as handle:
                names = set(handle.keys())
                golden = PromptGolden(handle.get_tensor("prompt_ids").tolist(), handle.get_tensor("tokens").tolist(),
                                      handle.get_tensor("logits"), hidden=None, file=path)
            if not any(n.startswith("hidden.") for n in names):
                raise KeyError("no residual streams")
        except Exception as err:  # safetensors raises its own error types for a bad file
            raise GoldenError(f"corrupt goldens: {path} cannot be read ({str(err).splitlines()[0]}): "
                              f"{redo(directory)}") from None
        check_prompt_golden(golden, entry, doc["key"], directory)
        goldens.append(golden)
    if prompts_digest([g.prompt for g in goldens]) != doc["key"]["prompts_sha256"]:
        raise GoldenError(f"corrupt goldens: the prompt files of {directory} do not match the prompts of its key: "
                          f"{redo(directory)}")
    return doc["key"], goldens


def cache_dir_for(model_dir: Path, fingerprint: str, prompts: list[list[int]], num_tokens: int) -> Path:
    """Where automatic reuse keeps the goldens of (checkpoint, prompts, num tokens)."""
    from .weights import cache_root
    name = hashlib.sha256(f"{fingerprint}:{prompts_digest(prompts)}:{num_tokens}".encode()).hexdigest()[:16]
    return cache_root() / "goldens" / f"{Path(model_dir).name[:40]}-{name}"


# -- choosing where goldens come from -----------------------------------------------------------------------------
def explicit_goldens(directory: Path, wanted: dict, say) -> list[PromptGolden]:
    """Goldens from a directory the user named: they must be for this checkpoint, these prompts and this number of
    tokens (else GoldenError, one line); a reference made by another transformers version or attention
    implementation is used, and said."""
    stored, goldens = load_goldens(directory)
    fixed = ("checkpoint_fingerprint", "prompts_sha256", "num_tokens", "reference_dtype")
    reasons = key_mismatches(stored, wanted, fixed)
    if reasons:
        what = {"checkpoint_fingerprint": "another checkpoint", "prompts_sha256": "other prompts",
                "num_tokens": "another number of tokens", "reference_dtype": "another reference dtype"}
        first = next(name for name in fixed if stored.get(name) != wanted.get(name))
        raise GoldenError(f"goldens in {directory} were made for {what[first]} ({'; '.join(reasons)}): run "
                          f"`granite-bench reference` with the same --model/--prompts/--num-tokens and --out "
                          f"{directory}")
    for reason in key_mismatches(stored, wanted, ("attn_implementation", "transformers_version")):
        say(f"note: goldens in {directory} differ from this machine's reference in {reason}; using them")
    return goldens


def cached_goldens(directory: Path, wanted: dict, say) -> list[PromptGolden] | None:
    """Goldens from the cache when every key field matches; None (with the reason said) otherwise."""
    if not (Path(directory) / GOLDEN_FILE).exists():
        return None
    try:
        stored, goldens = load_goldens(directory)
    except GoldenError as err:
        say(f"cached goldens not used: {err}")
        return None
    reasons = key_mismatches(stored, wanted)
    if reasons:
        say(f"cached goldens in {directory} not used: {'; '.join(reasons)}; recomputing the reference")
        return None
    return goldens


def golden_metadata(key: dict, model: str, model_dir: Path) -> dict:
    """The same run metadata as results rows carry (run id, time, git, versions, machine, config hash)."""
    from ..results import collect_run_metadata
    meta = collect_run_metadata(suite="reference", device="cpu", dtype=REFERENCE_DTYPE,
                                config={"model": model, "model_dir": str(model_dir), **key}, seed=0)
    return asdict(meta)


def golden_request(model_dir: Path, prompts: list[list[int]], num_tokens: int) -> tuple[str, dict]:
    """(checkpoint fingerprint, the key goldens of these prompts must carry)."""
    from .fingerprint import content_fingerprint
    from .hf_classes import checkpoint_architecture
    from .hf_reference import attention_for_length
    fingerprint = content_fingerprint(model_dir)
    attn = attention_for_length(max(len(p) for p in prompts) + num_tokens,
                                checkpoint_architecture(model_dir).hf_attn_implementation)
    return fingerprint, golden_key(fingerprint, prompts, num_tokens, attn)


def run_reference(model: str, model_dir: Path, prompts: list[list[int]], num_tokens: int, key: dict,
                  directory: Path, max_memory: str | None = None, progress=None) -> None:
    """Run the HF fp32 reference (under `max_memory` when given) and store its goldens in `directory`; the
    reference model is released before returning."""
    from .hf_reference import load_reference
    reference = load_reference(model_dir, attn_implementation=key["attn_implementation"], max_memory=max_memory)
    try:
        goldens = compute_goldens(reference, prompts, num_tokens, advance=progress)
    finally:
        del reference
        import gc
        gc.collect()
    save_goldens(goldens, key, directory, golden_metadata(key, model, model_dir))


def obtain_goldens(model: str, model_dir: Path, prompts: list[list[int]], num_tokens: int, say,
                   goldens_dir: Path | None = None, max_memory: str | None = None, progress=None) -> list[PromptGolden]:
    """Goldens for parity: from `goldens_dir` when given (the reference model is never loaded), else from the golden
    cache when a matching one is there (never loaded either), else computed by the HF reference (under
    `max_memory` when given), stored in the cache for next time, and the reference released before returning."""
    fingerprint, wanted = golden_request(model_dir, prompts, num_tokens)
    if goldens_dir is not None:
        goldens = explicit_goldens(Path(goldens_dir), wanted, say)
        say(f"goldens: {goldens_dir} (reference model not loaded)")
        return goldens
    cache = cache_dir_for(model_dir, fingerprint, prompts, num_tokens)
    goldens = cached_goldens(cache, wanted, say)
    if goldens is not None:
        say(f"goldens: reused {cache} (reference model not loaded)")
        return goldens
    run_reference(model, model_dir, prompts, num_tokens, wanted, cache, max_memory, progress)
    say(f"goldens: computed by the HF reference ({wanted['attn_implementation']} attention), cached in {cache}")
    return load_goldens(cache)[1]  # read back: the residual streams stay on disk until localisation needs them
