"""Trivial baselines for the canary tasks, and the canary scored the same way, so that a margin can be required.

A task is worth something only if a model that does not use the mechanism it claims to test scores far worse
than the canary. The baselines, each trained on FRESH samples of the task's own generator (never the eval
documents):
- majority: the answer seen most often in the fresh samples;
- word n-grams (n = 1..4, interpolated Witten-Bell smoothing): what local word statistics alone give;
- last-k: the canary itself fed only the last k tokens of the context (what a short window gives);
- canary_lists only: the longest and the shortest choice (the choices differ in length; the answer's length is
  uniform, so neither should beat chance).
The canary is scored with full context through HF Transformers (fp32). Scores per task:
- canary_recall: accuracy over the ten choices;
- canary_lists: accuracy over the four lists, each scored by its summed log-likelihood (as lm-eval's acc);
- canary_copy: exact match of the greedy continuation up to the period;
- canary_text: word perplexity of the notes' second half (the part a model can only get from the first half).

    python -m granite_bench.accuracy.baselines      # the table: task x (canary, best trivial baseline, chance)
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

from . import canary_data

FRESH_SEED = 4242          # fresh generator samples for the baselines (not the training or the eval seed)
FRESH_SAMPLES = 20000
LAST_K_TOKENS = 8
WORD = re.compile(r"[^\s.,;:|]+|[.,;:|]")


def words(text: str) -> list[str]:
    """Word-level units: whitespace-separated words with punctuation split off."""
    return WORD.findall(text)


def word_count(text: str) -> int:
    """Words as lm-eval's word_perplexity counts them (whitespace-separated)."""
    return len(text.split())


# ------------------------------------------------------------------------------------------ fresh samples

def fresh_texts(task: str, n: int = FRESH_SAMPLES, seed: int = FRESH_SEED) -> list[str]:
    """n whole examples of `task` (prompt + answer) from the generator, seeded apart from training and eval."""
    rng = random.Random(seed)
    if task == "canary_recall":
        return [(ex := canary_data.recall_example(rng))["prompt"] + ex["answer"] for _ in range(n)]
    if task == "canary_copy":
        return [(ex := canary_data.copy_example(rng))["prompt"] + ex["answer"] for _ in range(n)]
    if task == "canary_text":
        return [(ex := canary_data.note(rng))["first"] + ex["second"] for _ in range(n)]
    if task == "canary_lists":
        return [(ex := canary_data.lists_example(rng))["prompt"] + ex["answer"] for _ in range(n)]
    raise ValueError(f"no generator for task {task!r}")


# ------------------------------------------------------------------------------------------ n-gram model

class WordNgram:
    """Interpolated Witten-Bell word n-gram: P(w|h) = (c(h,w) + T(h)·P(w|h')) / (c(h) + T(h)), T(h) = number of
    distinct words seen after h; the unigram level is add-one over the vocabulary (+1 for unseen words)."""

    def __init__(self, order: int, texts: list[str]):
        self.order = order
        self.counts: dict[tuple, Counter] = defaultdict(Counter)
        for text in texts:
            units = ["<s>"] * (order - 1) + words(text) + ["</s>"]
            for i in range(order - 1, len(units)):
                for n in range(order):
                    self.counts[tuple(units[i - n:i])][units[i]] += 1
        self.vocab = sorted(self.counts[()])
        self.totals = {h: sum(c.values()) for h, c in self.counts.items()}

    def prob(self, history: tuple, word: str) -> float:
        p = (self.counts[()][word] + 1) / (self.totals[()] + len(self.vocab) + 1)
        for n in range(1, self.order):
            h = tuple(history[-n:]) if len(history) >= n else ("<s>",) * (n - len(history)) + tuple(history)
            seen = self.counts.get(h)
            if not seen:
                continue
            distinct = len(seen)
            p = (seen[word] + distinct * p) / (self.totals[h] + distinct)
        return p

    def logprob(self, context: str, continuation: str) -> float:
        """log P(continuation | context), word by word."""
        history, total = words(context), 0.0
        for w in words(continuation):
            total += math.log(self.prob(tuple(history), w))
            history.append(w)
        return total

    def greedy(self, context: str, stop: str = ".", max_words: int = 16) -> str:
        history, out = words(context), []
        for _ in range(max_words):
            w = max(self.vocab, key=lambda v: self.prob(tuple(history), v))
            if w in (stop, "</s>"):
                break
            out.append(w)
            history.append(w)
        return " ".join(out)


# ------------------------------------------------------------------------------------------ scorers

@dataclass
class Scorer:
    """A model as the tasks need it: log P(continuation | context) and a greedy continuation."""

    name: str
    logprob: callable          # (context, continuation) -> float
    greedy: callable           # (context) -> text up to the stop

    def choice_accuracy(self, docs: list[dict]) -> float:
        """Multiple choice: the choice with the highest log P(" choice" | prompt) (lm-eval's acc)."""
        hits = 0
        for doc in docs:
            scores = [self.logprob(doc["prompt"], f" {c}") for c in doc["choices"]]
            hits += int(max(range(len(scores)), key=scores.__getitem__) == doc["gold"])
        return hits / len(docs)

    def copy_exact(self, docs: list[dict]) -> float:
        return sum(self.greedy(d["prompt"]).strip(" .") == d["target"] for d in docs) / len(docs)

    def second_half_word_perplexity(self, docs: list[dict]) -> float:
        nll = sum(-self.logprob(d["text"][:d["second_at"]], d["text"][d["second_at"]:]) for d in docs)
        return math.exp(nll / sum(word_count(d["text"][d["second_at"]:]) for d in docs))

    def score(self, task: str, docs: list[dict]) -> float:
        return {"canary_recall": self.choice_accuracy, "canary_lists": self.choice_accuracy,
                "canary_copy": self.copy_exact,
                "canary_text": self.second_half_word_perplexity}[task](docs)


def ngram_scorer(order: int, texts: list[str]) -> Scorer:
    model = WordNgram(order, texts)
    return Scorer(f"{order}-gram", model.logprob, model.greedy)


def majority_scorer(task: str, texts: list[str]) -> Scorer:
    """The most frequent answer of the fresh samples, whatever the prompt (text: the unigram distribution; lists:
    the most frequent answer length, as every answer is a new combination of words)."""
    if task == "canary_text":  # the most frequent words: the unigram distribution
        unigram = WordNgram(1, texts)
        return Scorer("majority", unigram.logprob, unigram.greedy)
    if task == "canary_lists":  # "lists: ... | ben red owl oslo" -> 3 words
        lengths = Counter(len(t.rsplit(" | ", 1)[1].split()) - 1 for t in texts)
        top_length = lengths.most_common(1)[0][0]
        return Scorer("majority", lambda context, continuation: 0.0 if len(continuation.split()) == top_length
                      else -1.0, lambda context: "")
    if task == "canary_copy":  # "copy: q z m. q z m." -> "q z m"
        answers = Counter(t.split(". ", 1)[1].rstrip(".") for t in texts)
    else:                      # "recall: ... | door z" -> "z"
        answers = Counter(t.rsplit(" ", 1)[1] for t in texts)
    top = answers.most_common(1)[0][0]
    return Scorer("majority", lambda context, continuation: 0.0 if continuation.strip() == top else -1.0,
                  lambda context: top)


class TransformersLM:
    """A causal LM from HF Transformers (fp32, CPU) seeing at most `window` tokens of context (None: all)."""

    def __init__(self, model, tokenizer, window: int | None = None):
        self.model, self.tokenizer, self.window = model, tokenizer, window
        self.newline = tokenizer.encode("\n", add_special_tokens=False)[0]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def logprob(self, context: str, continuation: str) -> float:
        import torch

        ctx = self.encode(context)
        cont = self.encode(context + continuation)[len(ctx):]
        ids = ctx + cont
        total = 0.0
        with torch.no_grad():
            if self.window is None:
                logp = torch.log_softmax(self.model(input_ids=torch.tensor([ids[:-1]])).logits[0].float(), -1)
                return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))
            for i, t in enumerate(cont):  # each token from the `window` tokens before it only
                seen = ids[:len(ctx) + i][-self.window:]
                logits = self.model(input_ids=torch.tensor([seen])).logits[0, -1].float()
                total += float(torch.log_softmax(logits, -1)[t])
        return total

    def greedy(self, context: str, max_new_tokens: int = 16) -> str:
        import torch

        ids, out = self.encode(context), []
        with torch.no_grad():
            for _ in range(max_new_tokens):
                seen = (ids + out)[-self.window:] if self.window else ids + out
                nxt = int(self.model(input_ids=torch.tensor([seen])).logits[0, -1].argmax())
                if nxt in (self.newline, self.tokenizer.eos_token_id):
                    break
                out.append(nxt)
                if "." in self.tokenizer.decode(out):
                    break
        return self.tokenizer.decode(out).split(".")[0]

    def scorer(self, name: str) -> Scorer:
        return Scorer(name, self.logprob, self.greedy)


def load_canary(model_dir=None):
    """(model, tokenizer) of the shipped canary through HF Transformers, fp32, eval mode."""
    from transformers import AutoTokenizer

    from ..reference.hf_classes import hf_model_class
    from ..reference.weights import resolve_model_dir

    model_dir = model_dir or resolve_model_dir("canary")
    model = hf_model_class(model_dir).from_pretrained(model_dir, dtype="float32").eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def length_scorer(longest: bool) -> Scorer:
    """Picks the choice with the most (or the fewest) words, whatever the context."""
    sign = 1.0 if longest else -1.0
    return Scorer("longest choice" if longest else "shortest choice",
                  lambda context, continuation: sign * len(continuation.split()), lambda context: "")


HIGHER_IS_BETTER = {"canary_recall": True, "canary_lists": True, "canary_copy": True, "canary_text": False}


def chance(task: str, docs: list[dict]) -> float:
    """Uniform guessing: 1/choices; 26^-length for copy; for the second-half word perplexity, every word unit
    drawn uniformly from the documents' vocabulary (counted per whitespace word, as the models are)."""
    if task in ("canary_recall", "canary_lists"):
        return sum(1 / len(d["choices"]) for d in docs) / len(docs)
    if task == "canary_copy":
        return sum(26.0 ** -len(d["target"].split()) for d in docs) / len(docs)
    vocab = len(set(w for d in docs for w in words(d["text"])))
    units = sum(len(words(d["text"][d["second_at"]:])) for d in docs)
    return math.exp(units * math.log(vocab) / sum(word_count(d["text"][d["second_at"]:]) for d in docs))


def baseline_scores(task: str, docs: list[dict], canary_lm: TransformersLM | None = None,
                    n_fresh: int = FRESH_SAMPLES) -> dict[str, float]:
    """{baseline name: score on docs}: majority, 1..4-gram on fresh samples, the last-k canary if given, and for
    canary_lists the longest and the shortest choice."""
    texts = fresh_texts(task, n_fresh)
    scorers = [majority_scorer(task, texts)] + [ngram_scorer(n, texts) for n in (1, 2, 3, 4)]
    if task == "canary_lists":
        scorers += [length_scorer(longest=True), length_scorer(longest=False)]
    if canary_lm is not None:
        scorers.append(TransformersLM(canary_lm.model, canary_lm.tokenizer, LAST_K_TOKENS)
                       .scorer(f"canary, last {LAST_K_TOKENS} tokens"))
    return {s.name: s.score(task, docs) for s in scorers}


def best_of(task: str, scores: dict[str, float]) -> tuple[str, float]:
    pick = max if HIGHER_IS_BETTER[task] else min
    name = pick(scores, key=scores.get)
    return name, scores[name]


METRIC_NAMES = {"canary_recall": "accuracy", "canary_lists": "accuracy (summed log-likelihood)",
                "canary_text": "word perplexity, 2nd half", "canary_copy": "exact match"}


def table(n_docs: int = 100) -> list[dict]:
    """One row per task: canary (full context), the best trivial baseline (and which), chance."""
    model, tokenizer = load_canary()
    canary = TransformersLM(model, tokenizer)
    docs = canary_data.eval_documents()
    rows = []
    for task in ("canary_recall", "canary_lists", "canary_text", "canary_copy"):
        subset = docs[task][:n_docs]
        baselines = baseline_scores(task, subset, canary)
        best, best_score = best_of(task, baselines)
        rows.append({"task": task, "metric": METRIC_NAMES[task],
                     "canary": canary.scorer("canary").score(task, subset), "best_baseline": best,
                     "best_baseline_score": best_score, "chance": chance(task, subset), "docs": len(subset),
                     **{f"baseline: {k}": v for k, v in baselines.items()}})
    return rows


def main() -> None:
    import torch

    torch.set_num_threads(1)
    for row in table():
        print(" | ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
