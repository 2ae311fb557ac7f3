"""Train the canary: a tiny Granite whose eval accuracy drops when the implementation is wrong.

    python scripts/train_canary.py --out granite_bench/suites/models/canary --eval-dir granite_bench/suites/eval

Not part of the installed package (it only makes the checkpoint the package ships). Deterministic on a given
machine: fixed seeds, deterministic torch algorithms, a fixed number of threads. Writes the checkpoint
(config.json, model.safetensors, tokenizer files, TRAINING.md with the recipe and the losses) to --out and the
held-out eval documents (`canary_data.EVAL_SEED`, not the training seed) to --eval-dir/<task>/<task>.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from dataclasses import dataclass, asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from granite_bench.accuracy import canary_data

BOS = "<|end_of_text|>"  # Granite's convention: one token serves as bos and eos
PAD = "<|pad|>"


@dataclass
class TrainSettings:
    seed: int = 1234
    eval_seed: int = canary_data.EVAL_SEED   # held-out documents: a different stream from training
    tokenizer_lines: int = 20000
    vocab_size: int = 640
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    # The canary's Granite multipliers. Training runs with the plain ones (1, 1/sqrt(head_dim), 1, 1), which a
    # tiny model learns far faster from, and `fold_multipliers` then rewrites the weights into these (exactly; the
    # residual_scale below is exact only up to rms_norm_eps).
    # Chosen so that dropping each one shows in accuracy: an embedding multiplier of 12 (Granite 3.x's) is so
    # small a part of this canary's residual stream that dropping it changed no answer; with 32 copying fails.
    # logits_scaling 8 (Granite 3.1 2B's): applying it twice is a temperature of 8, which canary_lists sees.
    embedding_multiplier: float = 32.0
    attention_multiplier: float = 1.0 / 32  # 1/head_dim (Granite style), not 1/sqrt(head_dim)
    residual_multiplier: float = 0.22
    logits_scaling: float = 8.0
    # The whole residual stream (embeddings and every branch) scaled by this after training, the final norm
    # compensating: RMSNorm is scale-free but for its eps, so this is exact up to rms_norm_eps (1e-5), and it brings
    # the first layer's input to an RMS of ~0.05, where an eps of 1e-2 added outside the sqrt (a seeded bug) matters.
    residual_scale: float = 0.5
    steps: int = 4000
    batch_size: int = 24
    seq_len: int = 128
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    answer_weight: float = 5.0      # loss weight of answer tokens relative to the rest
    prompt_weight: float = 0.0      # loss weight of recall/copy prompt tokens (random, so unpredictable)
    note_first_weight: float = 0.2  # loss weight of a note's first half (random words; teaches the format)
    curriculum: float = 0.075       # fraction of steps (from each phase's start) over which examples grow
    # Training phases: (fraction of the steps, how often a row is recall, copy, notes, lists). Copying comes first:
    # it grows the induction heads (attend to the token after an earlier occurrence of this one) that recall by
    # content and the notes' second half then reuse.
    phases: tuple = ((0.125, (0, 1, 0, 0)), (0.875, (2, 1, 4, 2)))
    threads: int = 1
    log_every: int = 250


# ---------------------------------------------------------------- tokenizer

def train_tokenizer(settings: TrainSettings):
    """Byte-level BPE trained on synthetic lines; wrapped as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = canary_data.tokenizer_corpus(random.Random(settings.seed), settings.tokenizer_lines)
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=settings.vocab_size,
        special_tokens=[BOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=BOS,
        unk_token=BOS,
        pad_token=PAD,
        model_max_length=settings.max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )


# ---------------------------------------------------------------- model

def head_dim(settings: TrainSettings) -> int:
    return settings.hidden_size // settings.num_heads


def training_multipliers(settings: TrainSettings) -> dict:
    return {"embedding_multiplier": 1.0, "attention_multiplier": head_dim(settings) ** -0.5,
            "residual_multiplier": 1.0, "logits_scaling": 1.0}


def canary_multipliers(settings: TrainSettings) -> dict:
    return {"embedding_multiplier": settings.embedding_multiplier,
            "attention_multiplier": settings.attention_multiplier,
            "residual_multiplier": settings.residual_multiplier, "logits_scaling": settings.logits_scaling}


def canary_config(settings: TrainSettings, tokenizer, multipliers: dict):
    from transformers import GraniteConfig

    return GraniteConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_kv_heads,
        max_position_embeddings=settings.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": settings.rope_theta},
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **multipliers,
    )


@torch.no_grad()
def fold_multipliers(model, target: dict, residual_scale: float = 1.0):
    """A new model with Granite multipliers `target` computing the same function as `model` (exact up to
    rounding, and up to rms_norm_eps when residual_scale is not 1); `model` is left as it was:

    embedding  e·E            : E   *= e_old / e_new
    final norm g·E^T / l      : g   *= (e_new / e_old) * (l_new / l_old)     (E is tied to the LM head)
    q·k scale  a·q·k          : W_q *= a_old / a_new
    residual   h + r·branch   : W_o, W_down *= r_old / r_new
    residual stream × c       : E, W_o, W_down *= c; g /= c (every norm but eps is scale-free)
    """
    from transformers import GraniteForCausalLM

    c = model.config
    e, a, r, l = (c.embedding_multiplier, c.attention_multiplier, c.residual_multiplier, c.logits_scaling)
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    scale = residual_scale
    state["model.embed_tokens.weight"] *= e / target["embedding_multiplier"] * scale
    state["model.norm.weight"] *= target["embedding_multiplier"] / e * target["logits_scaling"] / l / scale
    for i in range(c.num_hidden_layers):
        state[f"model.layers.{i}.self_attn.q_proj.weight"] *= a / target["attention_multiplier"]
        state[f"model.layers.{i}.self_attn.o_proj.weight"] *= r / target["residual_multiplier"] * scale
        state[f"model.layers.{i}.mlp.down_proj.weight"] *= r / target["residual_multiplier"] * scale
    state.pop("lm_head.weight", None)  # tied to the embedding
    folded = GraniteForCausalLM(type(c)(**{**c.to_dict(), **target}))  # modules read multipliers at init
    folded.load_state_dict(state, strict=False)
    folded.tie_weights()
    return folded.eval()


# ---------------------------------------------------------------- data

KINDS = ("recall", "copy", "notes", "lists")


def encode_example(tokenizer, rng: random.Random, settings: TrainSettings, kind: str, progress: float = 1.0
                   ) -> tuple[list[int], list[float]]:
    """Token ids of one training example plus "\\n", and the loss weight of each token as a target.

    Early in each phase (its first `curriculum` of the steps) the examples are smaller (fewer copied letters, recall pairs and
    people in a note): with few distractors the attention pattern that solves them is found much sooner, then
    carries over to full size.
    """
    newline = tokenizer.encode("\n", add_special_tokens=False)
    since_phase = progress - phase_starts(settings)[phase_at(progress, settings)[0]] / settings.steps
    grown = min(1.0, since_phase / settings.curriculum) if settings.curriculum > 0 else 1.0

    def up_to(lo: int, hi: int) -> int:  # a size in [lo, lo + grown * (hi - lo)]
        return rng.randint(lo, max(lo, round(lo + grown * (hi - lo))))

    if kind == "notes":
        ex = canary_data.note(rng, up_to(2, canary_data.NOTE_PEOPLE))
        segments = [(ex["first"], settings.note_first_weight), (ex["second"], settings.answer_weight)]
    elif kind == "recall":
        ex = canary_data.recall_example(rng, up_to(2, canary_data.RECALL_PAIRS))
    elif kind == "lists":
        ex = canary_data.lists_example(rng, up_to(2, len(canary_data.LIST_LENGTHS)))
    else:
        ex = canary_data.copy_example(rng, up_to(2, canary_data.COPY_LEN[1]))
    if kind != "notes":
        segments = [(ex["prompt"], settings.prompt_weight), (ex["answer"], settings.answer_weight)]
    for query, answer in ex.get("queries", []):  # recall, lists: the other keys too, for a denser signal
        segments += [(query, settings.prompt_weight), (answer, settings.answer_weight)]
    ids, weights = [], []
    for text, weight in segments:
        piece = tokenizer.encode(text, add_special_tokens=False)
        ids += piece
        weights += [weight] * len(piece)
    return ids + newline, weights + [settings.answer_weight] * len(newline)


def training_batch(tokenizer, rng: random.Random, settings: TrainSettings, progress: float = 1.0):
    """ids, weights [batch, L]: one example per row starting at position 0 (as in eval), its kind drawn with the
    current phase's weights; half the rows after a bos token; right padding carries weight 0."""
    weights_now = phase_at(progress, settings)[1]
    rows, weights = [], []
    for _ in range(settings.batch_size):
        kind = rng.choices(KINDS, weights=weights_now)[0]
        ids, w = encode_example(tokenizer, rng, settings, kind, progress)
        if rng.random() < 0.5:
            ids, w = [tokenizer.bos_token_id] + ids, [0.0] + w
        rows.append(ids[: settings.seq_len + 1])
        weights.append(w[: settings.seq_len + 1])
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    target_weights = torch.zeros((len(rows), width))
    for i, (r, w) in enumerate(zip(rows, weights)):
        ids[i, :len(r)] = torch.tensor(r)
        target_weights[i, :len(w)] = torch.tensor(w)
    return ids, target_weights


# ---------------------------------------------------------------- training

def phase_at(progress: float, settings: TrainSettings) -> tuple[int, tuple]:
    """(index, task weights) of the phase that `progress` (0..1 of the steps) falls in."""
    end = 0.0
    for index, (fraction, weights) in enumerate(settings.phases):
        end += fraction
        if progress < end:
            return index, weights
    return len(settings.phases) - 1, settings.phases[-1][1]


def phase_starts(settings: TrainSettings) -> list[int]:
    starts, end = [], 0.0
    for fraction, _ in settings.phases:
        starts.append(int(round(end * settings.steps)))
        end += fraction
    return starts


def lr_at(step: int, settings: TrainSettings) -> float:
    """Cosine decay from lr to 5% over the whole run, with a linear warmup at the start of every phase (a new
    task under a full learning rate and Adam's small second moments wipes out what the last phase learned)."""
    start = max(s for s in phase_starts(settings) if s <= step)
    progress = step / max(1, settings.steps)
    peak = settings.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
    return peak * min(1.0, (step - start + 1) / settings.warmup_steps)


def train(model, tokenizer, settings: TrainSettings, log=print, probe=None) -> list[dict]:
    """AdamW with warmup and cosine decay; every log_every steps the mean loss (and `probe(model)` if given)."""
    rng = random.Random(settings.seed + 1)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr, betas=(0.9, 0.98),
    )
    history = []
    model.train()
    start = time.perf_counter()
    running = 0.0
    for step in range(settings.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, settings)
        ids, weights = training_batch(tokenizer, rng, settings, step / settings.steps)
        logits = model(input_ids=ids[:, :-1]).logits             # [B, L, V]
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # [B, L]
        w = weights[:, 1:]
        loss = (nll * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.item()
        if (step + 1) % settings.log_every == 0:
            entry = {"step": step + 1, "loss": running / settings.log_every,
                     "seconds": time.perf_counter() - start}
            if probe is not None:
                model.eval()
                entry.update(probe(model))
                model.train()
            history.append(entry)
            log(f"step {entry['step']:5d}  " + "  ".join(
                f"{k} {v:.4f}" for k, v in entry.items() if k not in ("step", "seconds")) + f"  {entry['seconds']:.0f}s")
            running = 0.0
    model.eval()
    return history


# ---------------------------------------------------------------- quick held-out check

@torch.no_grad()
def greedy_answer(model, tokenizer, prompt: str, max_new_tokens: int = 16) -> str:
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    newline = tokenizer.encode("\n", add_special_tokens=False)[0]
    out = []
    for _ in range(max_new_tokens):
        nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
        if nxt in (newline, tokenizer.eos_token_id):
            break
        out.append(nxt)
    return tokenizer.decode(out)


@torch.no_grad()
def choice_accuracy(model, tokenizer, docs: list[dict]) -> float:
    """Multiple-choice accuracy: the choice with the highest summed log-likelihood (as lm-eval's acc)."""
    hits = 0
    for doc in docs:
        ctx = tokenizer.encode(doc["prompt"], add_special_tokens=False)
        logp = torch.log_softmax(model(input_ids=torch.tensor([ctx])).logits[0, -1], -1)
        scores = []
        for choice in doc["choices"]:
            whole = tokenizer.encode(doc["prompt"] + " " + choice, add_special_tokens=False)
            cont = whole[len(ctx):]
            if len(cont) == 1:
                scores.append(float(logp[cont[0]]))
            else:  # a multi-token choice: score it in full
                lp = torch.log_softmax(model(input_ids=torch.tensor([whole[:-1]])).logits[0], -1)
                scores.append(sum(float(lp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
        hits += int(max(range(len(scores)), key=scores.__getitem__) == doc["gold"])
    return hits / len(docs)


def copy_accuracy(model, tokenizer, docs: list[dict]) -> float:
    answers = [greedy_answer(model, tokenizer, d["prompt"]).split(".")[0].strip() for d in docs]
    return sum(a == d["target"] for a, d in zip(answers, docs)) / len(docs)


# ---------------------------------------------------------------- outputs

eval_documents = canary_data.eval_documents


@torch.no_grad()
def second_half_perplexity(model, tokenizer, docs: list[dict]) -> float:
    """Token-level perplexity of the held-out notes' second halves (each note after the bos token)."""
    nll, count = 0.0, 0
    for doc in docs:
        first = [tokenizer.bos_token_id] + tokenizer.encode(doc["text"][:doc["second_at"]], add_special_tokens=False)
        ids = first + tokenizer.encode(doc["text"][doc["second_at"]:], add_special_tokens=False)
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1], -1)
        token_logp = logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        nll -= float(token_logp[len(first) - 1:].sum())
        count += len(ids) - len(first)
    return math.exp(nll / count)


def held_out_checks(model, tokenizer, seed: int) -> dict[str, float]:
    docs = eval_documents(seed)
    return {"recall_acc": choice_accuracy(model, tokenizer, docs["canary_recall"][:100]),
            "copy_exact": copy_accuracy(model, tokenizer, docs["canary_copy"][:50]),
            "notes_second_half_token_ppl": second_half_perplexity(model, tokenizer, docs["canary_text"][:50]),
            "lists_acc": choice_accuracy(model, tokenizer, docs["canary_lists"][:100])}


@torch.no_grad()
def max_fold_error(before, after, tokenizer, seed: int) -> float:
    """max |Δ logit| between the trained and the folded model on a few held-out prompts."""
    docs = eval_documents(seed)
    prompts = [docs["canary_recall"][0]["prompt"], docs["canary_copy"][0]["prompt"], docs["canary_text"][0]["text"],
               docs["canary_lists"][0]["prompt"]]
    worst = 0.0
    for prompt in prompts:
        ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
        worst = max(worst, float((before(input_ids=ids).logits - after(input_ids=ids).logits).abs().max()))
    return worst


def write_training_note(out: Path, settings: TrainSettings, history: list[dict], wall_s: float,
                        checks: dict[str, float], fold_error: float, command: str) -> None:
    probes = [k for k in history[0] if k not in ("step", "loss", "seconds")]
    lines = [
        "# Canary model",
        "",
        f"A tiny Granite ({settings.num_layers} layers, hidden {settings.hidden_size}, {settings.num_heads} query heads "
        f"over {settings.num_kv_heads} KV heads, RoPE, tied embeddings) with its",
        "byte-level BPE tokenizer, trained on synthetic recall by content (shuffled keys), copying, notes",
        "whose second half repeats the first in a new order, and lists of different lengths recalled by name",
        "(multi-token choices), so that its eval accuracy is far above chance and",
        "above every trivial baseline, and drops when the implementation is broken. See",
        "`granite_bench/accuracy/canary_data.py` for the tasks and `scripts/train_canary.py` for the recipe.",
        "",
        "Made by (deterministic on a given machine: fixed seeds, deterministic torch algorithms):",
        "",
        f"    {command}",
        "",
        f"- seed {settings.seed} (tokenizer and training stream); held-out eval documents from seed "
        f"{settings.eval_seed} (`suites/eval/canary_*/`)",
        f"- {settings.steps} steps of AdamW (lr {settings.lr}, cosine, {settings.warmup_steps}-step warmup at each "
        f"phase), batch {settings.batch_size}, one example per row, loss on answers (x{settings.answer_weight}) "
        f"and notes (first half x{settings.note_first_weight}); phases (fraction, recall:copy:notes:lists weights): {list(settings.phases)}",
        "- trained with plain multipliers (embedding 1, attention 1/sqrt(head_dim), residual 1, logits 1), then",
        f"  folded into Granite's: embedding_multiplier {settings.embedding_multiplier}, "
        f"attention_multiplier {settings.attention_multiplier}, residual_multiplier {settings.residual_multiplier}, "
        f"logits_scaling {settings.logits_scaling}, residual stream x{settings.residual_scale} "
        f"(max |Δ logit| after folding: {fold_error:.2e})",
        f"- wall time {wall_s:.0f} s with {settings.threads} threads on {platform.machine()} "
        f"({platform.processor() or 'cpu'}), torch {torch.__version__}",
        f"- training loss: first logged {history[0]['loss']:.4f}, final {history[-1]['loss']:.4f}",
        "- held-out checks (HF Transformers, fp32, folded weights): "
        + ", ".join(f"{k} {v:.3f}" for k, v in checks.items()),
        "",
        "Loss (mean over each logging window; weighted as in training) and held-out probes while training:",
        "",
        "| step | loss | " + " | ".join(probes) + " | seconds |",
        "| --- | --- | " + " | ".join("---" for _ in probes) + " | --- |",
    ] + [f"| {h['step']} | {h['loss']:.4f} | " + " | ".join(f"{h[k]:.2f}" for k in probes)
         + f" | {h['seconds']:.0f} |" for h in history] + [
        "",
        "Settings:",
        "",
        "```json",
        json.dumps(asdict(settings), indent=2),
        "```",
    ]
    (out / "TRAINING.md").write_text("\n".join(lines) + "\n")


def save_checkpoint(model, tokenizer, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # Name the tokenizer class transformers 4.x knows too (5.x writes its new "TokenizersBackend").
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def settings_with(overrides: list[str]) -> TrainSettings:
    """TrainSettings with NAME=VALUE overrides (VALUE parsed as JSON, else taken as a string)."""
    fields = {}
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in TrainSettings.__dataclass_fields__:
            raise SystemExit(f"--set {item}: no setting '{name}' (one of {', '.join(TrainSettings.__dataclass_fields__)})")
        try:
            fields[name] = json.loads(value)
        except json.JSONDecodeError:
            fields[name] = value
    if "phases" in fields:
        fields["phases"] = tuple((f, tuple(w)) for f, w in fields["phases"])
    return TrainSettings(**fields)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("granite_bench/suites/models/canary"))
    parser.add_argument("--eval-dir", type=Path, default=Path("granite_bench/suites/eval"))
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override one TrainSettings field (JSON value), e.g. --set steps=1200")
    parser.add_argument("--data-only", action="store_true", help="only (re)write the eval documents")
    args = parser.parse_args(argv)

    settings = settings_with(args.set)
    canary_data.write_eval_documents(args.eval_dir, settings.eval_seed)
    if args.data_only:
        return

    from transformers import GraniteForCausalLM

    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    tokenizer = train_tokenizer(settings)
    model = GraniteForCausalLM(canary_config(settings, tokenizer, training_multipliers(settings)))
    docs = eval_documents(settings.eval_seed)
    probe = lambda m: {"recall_acc": choice_accuracy(m, tokenizer, docs["canary_recall"][:40]),  # noqa: E731
                       "copy_exact": copy_accuracy(m, tokenizer, docs["canary_copy"][:10]),
                       "notes_ppl": second_half_perplexity(m, tokenizer, docs["canary_text"][:10]),
                       "lists_acc": choice_accuracy(m, tokenizer, docs["canary_lists"][:40])}
    history = train(model, tokenizer, settings, probe=probe)
    wall_s = time.perf_counter() - start

    trained, model = model, fold_multipliers(model, canary_multipliers(settings), settings.residual_scale)
    fold_error = max_fold_error(trained, model, tokenizer, settings.eval_seed)
    checks = held_out_checks(model, tokenizer, settings.eval_seed)
    print(f"held-out: {checks}; fold error {fold_error:.2e}; {wall_s:.0f} s")

    save_checkpoint(model, tokenizer, args.out)
    command = f"python scripts/train_canary.py --out {args.out} --eval-dir {args.eval_dir}" + "".join(
        f" --set {item}" for item in args.set)
    write_training_note(args.out, settings, history, wall_s, checks, fold_error, command)


if __name__ == "__main__":
    main()
