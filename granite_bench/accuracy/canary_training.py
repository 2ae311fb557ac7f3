"""Train the canary: a tiny Granite whose eval accuracy drops when the implementation is wrong.

    python -m granite_bench.accuracy.canary_training --out suites/models/canary

Deterministic on a given machine: fixed seeds, deterministic torch algorithms, 2 threads.
Writes the checkpoint (config.json, model.safetensors, tokenizer files, TRAINING.md) to --out and
the held-out eval documents (different seed) to --eval-dir/<task>/<task>.jsonl.
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
    eval_seed: int = 98765          # held-out documents: a different stream from training
    tokenizer_lines: int = 20000
    vocab_size: int = 640
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    embedding_multiplier: float = 12.0
    attention_multiplier: float = 1.0 / 32  # 1/head_dim (Granite style), not 1/sqrt(head_dim)
    residual_multiplier: float = 0.22
    logits_scaling: float = 4.0
    steps: int = 1500
    batch_size: int = 24
    seq_len: int = 128
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    answer_weight: float = 5.0      # loss weight of answer tokens relative to the rest
    prompt_weight: float = 0.0      # loss weight of recall/copy prompt tokens (random, so unpredictable)
    curriculum: float = 0.3         # fraction of steps over which lists and strings grow to full length
    task_weights: tuple = (4, 3, 3, 0)  # how often a batch is recall, copy, story, alt (after the start)
    copy_only: float = 0.25         # fraction of steps, at the start, that train copying alone
    scale_qk_init: bool = True
    threads: int = 2
    log_every: int = 50


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

def canary_config(settings: TrainSettings, tokenizer):
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
        embedding_multiplier=settings.embedding_multiplier,
        attention_multiplier=settings.attention_multiplier,
        residual_multiplier=settings.residual_multiplier,
        logits_scaling=settings.logits_scaling,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )


@torch.no_grad()
def init_weights_(model, settings: TrainSettings) -> None:
    """HF's init, with q/k scaled up so that q·k·attention_multiplier starts with the spread of a 1/sqrt(d)
    model: a Granite-small attention_multiplier otherwise leaves attention uniform for many steps."""
    if not settings.scale_qk_init:
        return
    head_dim = settings.hidden_size // settings.num_heads
    gain = math.sqrt(1.0 / (settings.attention_multiplier * math.sqrt(head_dim)))
    for layer in model.model.layers:
        layer.self_attn.q_proj.weight.mul_(gain)
        layer.self_attn.k_proj.weight.mul_(gain)


# ---------------------------------------------------------------- data

KINDS = ("recall", "copy", "story", "alt")


def encode_example(tokenizer, rng: random.Random, settings: TrainSettings, kind: str, progress: float = 1.0
                   ) -> tuple[list[int], list[float]]:
    """Token ids of one training example plus "\\n", and the loss weight of each token as a target.

    Early in training (progress < curriculum) recall lists and copy strings are shorter: with few distractors
    the attention pattern that solves them is found much sooner, then carries over to full length.
    """
    newline = tokenizer.encode("\n", add_special_tokens=False)
    if kind == "story":
        ids = tokenizer.encode(canary_data.story(rng), add_special_tokens=False) + newline
        return ids, [1.0] * len(ids)
    grown = min(1.0, progress / settings.curriculum) if settings.curriculum > 0 else 1.0
    if kind == "alt":
        ex = canary_data.alternation_example(rng)
    else:
        lo, hi = canary_data.RECALL_PAIRS if kind == "recall" else canary_data.COPY_LEN
        size = rng.randint(min(2, lo), max(2, round(2 + grown * (hi - 2))))
        ex = canary_data.recall_example(rng, size) if kind == "recall" else canary_data.copy_example(rng, size)
    segments = [(ex["prompt"], settings.prompt_weight), (ex["answer"], settings.answer_weight)]
    for query, answer in ex.get("queries", []):  # recall: the other keys too, for a denser signal
        segments += [(query, settings.prompt_weight), (answer, settings.answer_weight)]
    ids, weights = [], []
    for text, weight in segments:
        piece = tokenizer.encode(text, add_special_tokens=False)
        ids += piece
        weights += [weight] * len(piece)
    return ids + newline, weights + [settings.answer_weight] * len(newline)


def training_batch(tokenizer, rng: random.Random, settings: TrainSettings, progress: float = 1.0):
    """ids, weights [batch, L]: one kind of example per batch, one example per row starting at position 0 (as
    in eval), half the rows after a bos token; right padding carries weight 0.

    The first `copy_only` of training is copying alone: it forms the induction heads (find the previous
    occurrence of this token, predict what followed it) that recall then reuses; mixed from the start, the
    tasks stall each other on a loss plateau."""
    weights_now = (0, 1, 0, 0) if progress < settings.copy_only else settings.task_weights
    kind = rng.choices(KINDS, weights=weights_now)[0]
    rows, weights = [], []
    for _ in range(settings.batch_size):
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

def lr_at(step: int, settings: TrainSettings) -> float:
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


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
def greedy_answer(model, tokenizer, prompt: str, max_new_tokens: int = 12) -> str:
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
def recall_accuracy(model, tokenizer, docs: list[dict]) -> float:
    """Multiple-choice accuracy: the choice with the highest log-likelihood (single-token values)."""
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
            else:  # rare multi-token value: score it in full
                lp = torch.log_softmax(model(input_ids=torch.tensor([whole[:-1]])).logits[0], -1)
                scores.append(sum(float(lp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
        hits += int(max(range(len(scores)), key=scores.__getitem__) == doc["gold"])
    return hits / len(docs)


def copy_accuracy(model, tokenizer, docs: list[dict]) -> float:
    answers = [greedy_answer(model, tokenizer, d["prompt"]).split(".")[0].strip() for d in docs]
    return sum(a == d["target"] for a, d in zip(answers, docs)) / len(docs)


# ---------------------------------------------------------------- outputs

EVAL_DOCS = {"canary_recall": (canary_data.recall_docs, 200),
             "canary_copy": (canary_data.copy_docs, 200),
             "canary_text": (canary_data.text_docs, 100)}


def eval_documents(seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    return {task: make(rng, n) for task, (make, n) in EVAL_DOCS.items()}


def write_eval_documents(eval_dir: Path, seed: int) -> None:
    for task, docs in eval_documents(seed).items():
        folder = eval_dir / task
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{task}.jsonl", "w") as f:
            for doc in docs:
                f.write(json.dumps(doc) + "\n")


def write_training_note(out: Path, settings: TrainSettings, history: list[dict],
                        wall_s: float, checks: dict[str, float], command: str) -> None:
    lines = [
        "# Canary model",
        "",
        "A tiny Granite trained on synthetic key->value recall, copying and short stories, so that",
        "its eval accuracy is far above chance and drops when the implementation is broken.",
        "",
        "Made by:",
        "",
        f"    {command}",
        "",
        f"- seed {settings.seed} (training stream and tokenizer), held-out eval seed {settings.eval_seed}",
        f"- {settings.steps} steps, batch {settings.batch_size} x {settings.seq_len} tokens, "
        f"AdamW lr {settings.lr} (warmup {settings.warmup_steps}, cosine), {settings.threads} threads",
        f"- wall time {wall_s:.0f} s on {platform.processor() or platform.machine()}, torch {torch.__version__}",
        f"- final training loss {history[-1]['loss']:.4f} (first logged {history[0]['loss']:.4f})",
        "- held-out checks (HF Transformers, fp32): "
        + ", ".join(f"{k} {v:.3f}" for k, v in checks.items()),
        "",
        "Settings:",
        "",
        "```json",
        json.dumps(asdict(settings), indent=2),
        "```",
        "",
        "Loss curve (mean over each logging window):",
        "",
        "| step | loss | seconds |",
        "| --- | --- | --- |",
    ] + [f"| {h['step']} | {h['loss']:.4f} | {h['seconds']:.0f} |" for h in history]
    (out / "TRAINING.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("suites/models/canary"))
    parser.add_argument("--eval-dir", type=Path, default=Path("suites/eval"))
    parser.add_argument("--steps", type=int, default=TrainSettings.steps)
    parser.add_argument("--data-only", action="store_true", help="only (re)write the eval documents")
    args = parser.parse_args(argv)

    settings = TrainSettings(steps=args.steps)
    write_eval_documents(args.eval_dir, settings.eval_seed)
    if args.data_only:
        return

    from transformers import GraniteForCausalLM

    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    tokenizer = train_tokenizer(settings)
    model = GraniteForCausalLM(canary_config(settings, tokenizer))
    init_weights_(model, settings)
    history = train(model, tokenizer, settings)
    wall_s = time.perf_counter() - start

    docs = eval_documents(settings.eval_seed)
    checks = {"recall_acc": recall_accuracy(model, tokenizer, docs["canary_recall"][:100]),
              "copy_exact": copy_accuracy(model, tokenizer, docs["canary_copy"][:50])}
    print("held-out:", checks)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    command = "python -m granite_bench.accuracy.canary_training --out suites/models/canary"
    if args.steps != TrainSettings.steps:
        command += f" --steps {args.steps}"
    write_training_note(args.out, settings, history, wall_s, checks, command)


if __name__ == "__main__":
    main()
