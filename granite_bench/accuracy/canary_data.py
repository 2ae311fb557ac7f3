"""Synthetic text for the canary model: training rows, held-out eval documents, and fresh samples for baselines.

Each task is built so that its answer is not in any fixed position or short window, only in the content of the
context far back (the tests compute the trivial baselines from fresh samples of these same generators):
- recall: "recall: lamp q, door z, ... | door" + " z"
      keys are words drawn at random and listed in random order, each with a distinct random letter; one key is
      asked and the ten choices are the values in the prompt. The answer is found only by matching the asked
      key's content to its earlier occurrence (an induction head: RoPE, the q·k scale and GQA all matter).
- copy:   "copy: q z m f k." + " q z m f k."
      copy random distinct letters and stop at the period (generation: every token after the first comes from the
      decode path and its KV cache).
- notes:  "notes: anna red fox rome; ben blue owl oslo; ... again: ben blue owl oslo; anna red fox rome; ..."
      four people each with a colour, an animal and a city (all distinct within a note), then the same lines again
      in a new order. The first half is random; the second half is predictable from the first half only (after
      each name, its three words), so a model that does not look back is no better than a bigram there.
- lists:  "lists: cara pink lamp; ben red owl oslo; dan cup; anna fox bern lima | ben" + " red owl oslo"
      four people, each with a list of distinct words of a different length (1, 2, 3 and 4 words, shuffled); one
      person is asked and the four choices are the four lists. The answer's length is uniform over 1..4, so length
      tells nothing; but the choices differ in token count, so the summed log-likelihood that picks one depends on
      the logits' temperature: a model whose logits are scaled wrongly (e.g. divided by logits_scaling twice)
      pays a price per extra token and picks the shorter lists, though every argmax is unchanged.
Values, copied letters, note words and list words are single tokens of the canary's tokenizer, pairwise distinct within an
example. All generators take a `random.Random`, so the same seed gives the same text.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

LETTERS = list(string.ascii_lowercase)
RECALL_KEYS = ["apple", "bell", "boat", "book", "chair", "coin", "cup", "desk", "door", "drum", "fork", "hat",
               "key", "kite", "lamp", "map", "nest", "pen", "ring", "rope", "sock", "star", "tent", "vase"]
NAMES = ["anna", "ben", "cara", "dan", "eva", "finn", "gus", "hana", "ivan", "jo",
         "kim", "leo", "mia", "ned", "olga", "pia", "rex", "sara", "tom", "uma"]
COLORS = ["red", "blue", "green", "black", "white", "brown", "grey", "pink"]
ANIMALS = ["cat", "dog", "fox", "owl", "hen", "cow", "pig", "bee", "rat", "elk"]
CITIES = ["rome", "oslo", "lima", "kyiv", "baku", "doha", "riga", "bern"]

LIST_WORDS = RECALL_KEYS + COLORS + ANIMALS + CITIES   # the words a list is made of (50)

RECALL_PAIRS = 10        # key/value pairs in one recall prompt; every value is a choice (chance = 1/10)
COPY_LEN = (5, 12)       # inclusive range of letters in one copy string
NOTE_PEOPLE = 4          # people in one note
RECAP_MARK = " again:"   # where the second half of a note starts
LIST_LENGTHS = (1, 2, 3, 4)  # one list of each length in an example: the choices' word counts

# held-out eval documents: task -> (generator, number of documents); written beside the task YAMLs
EVAL_SEED = 98765
EVAL_COUNTS = {"canary_recall": 200, "canary_copy": 200, "canary_text": 100, "canary_lists": 200}


# ---------------------------------------------------------------------------------------------- examples

def recall_example(rng: random.Random, n_pairs: int = RECALL_PAIRS) -> dict:
    """n_pairs random keys in random order, each with a distinct random letter; every key asked once, in another
    random order (`asked` first: the eval question; the rest become extra training targets in `queries`)."""
    keys = rng.sample(RECALL_KEYS, n_pairs)
    values = rng.sample(LETTERS, n_pairs)
    listing = ", ".join(f"{k} {v}" for k, v in zip(keys, values))
    order = rng.sample(range(n_pairs), n_pairs)
    asked = order[0]
    return {"prompt": f"recall: {listing} | {keys[asked]}", "answer": f" {values[asked]}",
            "values": values, "asked": asked,
            "queries": [(f"; {keys[i]}", f" {values[i]}") for i in order[1:]]}


def copy_example(rng: random.Random, length: int | None = None) -> dict:
    """Distinct letters, one token each: "copy: q z m f k." -> " q z m f k."."""
    word = " ".join(rng.sample(LETTERS, length or rng.randint(*COPY_LEN)))
    return {"prompt": f"copy: {word}.", "answer": f" {word}."}


def note(rng: random.Random, people: int = NOTE_PEOPLE) -> dict:
    """{"first": "notes: anna red fox rome; ...", "second": " again: ben blue owl oslo; ... ."}: the second half
    repeats the first half's lines in a new random order."""
    names = rng.sample(NAMES, people)
    lines = [f"{n} {c} {a} {t}" for n, c, a, t in
             zip(names, rng.sample(COLORS, people), rng.sample(ANIMALS, people), rng.sample(CITIES, people))]
    recap = rng.sample(lines, people)
    return {"first": "notes: " + "; ".join(lines) + ".", "second": RECAP_MARK + " " + "; ".join(recap) + "."}


def lists_example(rng: random.Random, people: int = len(LIST_LENGTHS)) -> dict:
    """`people` people in random order, each with a list of distinct words, the lists of lengths LIST_LENGTHS[:people]
    in random order; every person asked once, in another random order (`asked` first: the eval question; the rest
    become extra training targets in `queries`)."""
    names = rng.sample(NAMES, people)
    lengths = rng.sample(LIST_LENGTHS[:people], people)
    pool = iter(rng.sample(LIST_WORDS, sum(lengths)))
    lists = [" ".join(next(pool) for _ in range(n)) for n in lengths]
    listing = "; ".join(f"{name} {items}" for name, items in zip(names, lists))
    order = rng.sample(range(people), people)
    asked = order[0]
    return {"prompt": f"lists: {listing} | {names[asked]}", "answer": f" {lists[asked]}",
            "lists": lists, "asked": asked,
            "queries": [(f"; {names[i]}", f" {lists[i]}") for i in order[1:]]}


def training_line(rng: random.Random) -> str:
    """One example as a line of text (the tokenizer's training corpus)."""
    kind = rng.choice(["recall", "copy", "notes", "lists"])
    if kind == "lists":
        ex = lists_example(rng)
        return ex["prompt"] + ex["answer"] + "".join(q + a for q, a in ex["queries"])
    if kind == "recall":
        ex = recall_example(rng)
        return ex["prompt"] + ex["answer"] + "".join(q + a for q, a in ex["queries"])
    if kind == "copy":
        ex = copy_example(rng)
        return ex["prompt"] + ex["answer"]
    ex = note(rng)
    return ex["first"] + ex["second"]


def tokenizer_corpus(rng: random.Random, n_lines: int) -> list[str]:
    return [training_line(rng) for _ in range(n_lines)]


def single_token_words() -> list[str]:
    """Every word the tasks rely on being one token (with its leading space)."""
    return [f" {w}" for w in LETTERS + RECALL_KEYS + NAMES + COLORS + ANIMALS + CITIES]


# ---------------------------------------------------------------------------------------------- eval documents

def choice_doc(rng: random.Random, i: int, prompt: str, options: list, answer) -> dict:
    """A multiple-choice document: the options in a shuffled order and the index of the answer among them."""
    choices = list(options)
    rng.shuffle(choices)
    return {"id": i, "prompt": prompt, "choices": choices, "gold": choices.index(answer)}


def recall_docs(rng: random.Random, n: int) -> list[dict]:
    docs = []
    for i in range(n):
        ex = recall_example(rng)
        docs.append(choice_doc(rng, i, ex["prompt"], ex["values"], ex["values"][ex["asked"]]))
    return docs


def copy_docs(rng: random.Random, n: int) -> list[dict]:
    docs = []
    for i in range(n):
        ex = copy_example(rng)
        docs.append({"id": i, "prompt": ex["prompt"], "target": ex["answer"].strip(" .")})
    return docs


def text_docs(rng: random.Random, n: int) -> list[dict]:
    """{"text": whole note, "second_at": character offset where its second half starts}."""
    docs = []
    for i in range(n):
        ex = note(rng)
        docs.append({"id": i, "text": ex["first"] + ex["second"], "second_at": len(ex["first"])})
    return docs


def lists_docs(rng: random.Random, n: int) -> list[dict]:
    """{"prompt", "choices": the four lists (shuffled), "gold"}: multiple choice over multi-token choices."""
    docs = []
    for i in range(n):
        ex = lists_example(rng)
        docs.append(choice_doc(rng, i, ex["prompt"], ex["lists"], ex["lists"][ex["asked"]]))
    return docs


DOC_MAKERS = {"canary_recall": recall_docs, "canary_copy": copy_docs, "canary_text": text_docs,
              "canary_lists": lists_docs}


def eval_documents(seed: int = EVAL_SEED, counts: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """{task: documents}, drawn in a fixed task order from one stream seeded with `seed`."""
    rng = random.Random(seed)
    return {task: DOC_MAKERS[task](rng, n) for task, n in (counts or EVAL_COUNTS).items()}


def write_eval_documents(eval_dir: Path, seed: int = EVAL_SEED) -> None:
    """<eval_dir>/<task>/<task>.jsonl for each task."""
    for task, docs in eval_documents(seed).items():
        folder = Path(eval_dir) / task
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{task}.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
