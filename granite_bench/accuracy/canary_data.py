"""Synthetic text for the canary model: training rows and held-out eval documents.

Every task needs attention over the context (and, when generating, over the KV cache):
- recall:  "recall: k q; d z; ... | d" + " z"              (find the key, copy its value; in training
                                                             every key is asked, in random order)
- copy:    "copy: q z m f k." + " q z m f k."                (copy random letters, stop at the period)
Keys, values and copied symbols are all single-letter tokens (" q"), pairwise distinct within an example: a
tiny model's induction heads form fast on a small alphabet, and only work on the tokens they formed on.
- story:   short stories whose second half restates facts from the first half.

All generators take a `random.Random`, so the same seed gives the same text.
"""

from __future__ import annotations

import random
import string

LETTERS = string.ascii_lowercase
SYMBOLS = list(LETTERS)
NAMES = ["anna", "ben", "cara", "dan", "eva", "finn", "gus", "hana", "ivan", "jo",
         "kim", "leo", "mia", "ned", "olga", "pia", "rex", "sara", "tom", "uma"]
COLORS = ["red", "blue", "green", "black", "white", "brown", "grey", "pink"]
ANIMALS = ["cat", "dog", "fox", "owl", "hen", "cow", "pig", "bee", "rat", "elk"]
CITIES = ["rome", "oslo", "lima", "kyiv", "baku", "doha", "riga", "bern"]
FILLERS = ["it is a sunny day.", "the wind is cold.", "we walk to the park.",
           "the bus is late.", "it rains a lot."]

RECALL_PAIRS = (8, 13)  # inclusive range of key/value pairs in one recall prompt (2 x 13 = 26 letters)
RECALL_CHOICES = 10
COPY_LEN = (5, 12)      # inclusive range of symbols in one copy string


def recall_example(rng: random.Random, n_pairs: int | None = None) -> dict:
    """A key->value list and one key to look up; the 2 x n_pairs letters are all distinct."""
    n_pairs = n_pairs or rng.randint(*RECALL_PAIRS)
    letters = rng.sample(SYMBOLS, 2 * n_pairs)
    keys, values = letters[:n_pairs], letters[n_pairs:]
    order = rng.sample(range(n_pairs), n_pairs)  # order in which the keys are asked
    asked = order[0]
    listing = "; ".join(f"{k} {v}" for k, v in zip(keys, values))
    prompt = f"recall: {listing} | {keys[asked]}"
    return {"prompt": prompt, "answer": f" {values[asked]}", "values": [str(v) for v in values],
            "asked": asked, "queries": [(f"; {keys[i]}", f" {values[i]}") for i in order[1:]]}


def recall_choices(rng: random.Random, example: dict) -> tuple[list[str], int]:
    """RECALL_CHOICES values from the prompt itself (so seeing a value is not enough); gold index."""
    values = example["values"]
    gold = values[example["asked"]]
    others = [v for v in values if v != gold]
    choices = rng.sample(others, RECALL_CHOICES - 1) + [gold]
    rng.shuffle(choices)
    return choices, choices.index(gold)


def copy_example(rng: random.Random, length: int | None = None) -> dict:
    """Distinct symbols, one token each, so every position is found unambiguously by its content."""
    word = " ".join(rng.sample(SYMBOLS, length or rng.randint(*COPY_LEN)))
    return {"prompt": f"copy: {word}.", "answer": f" {word}."}


def alternation_example(rng: random.Random, repeats: int | None = None) -> dict:
    """Two symbols, alternating: every next token is the one before the current token. Trains the
    previous-token heads that recall's induction circuit is built on (a training-only scaffold)."""
    a, b = rng.sample(SYMBOLS, 2)
    tail = " ".join([a, b] * (repeats or rng.randint(3, 6)))
    return {"prompt": f"alt: {a} {b}", "answer": f" {tail}."}


def story(rng: random.Random) -> str:
    """Facts about three people, then some of them said again (predictable only by looking back)."""
    people = rng.sample(NAMES, 3)
    facts = {p: (rng.choice(COLORS), rng.choice(ANIMALS), rng.choice(CITIES)) for p in people}
    intro = []
    for p, (color, animal, city) in facts.items():
        intro += [f"{p} has a {color} {animal}.", f"{p} lives in {city}."]
    rng.shuffle(intro)
    recap = []
    for p, (color, animal, city) in facts.items():
        recap += [f"the {animal} of {p} is {color}.", f"{p} is from {city}."]
    recap = rng.sample(recap, rng.randint(3, len(recap)))
    return " ".join(intro + [rng.choice(FILLERS)] + recap)


def training_line(rng: random.Random) -> str:
    """One training example as a line of text (recall-heavy: it is the hardest task)."""
    kind = rng.choices(["recall", "copy", "story"], weights=[5, 3, 2])[0]
    if kind == "recall":
        ex = recall_example(rng)
        return ex["prompt"] + ex["answer"]
    if kind == "copy":
        ex = copy_example(rng)
        return ex["prompt"] + ex["answer"]
    return story(rng)


def tokenizer_corpus(rng: random.Random, n_lines: int) -> list[str]:
    return [training_line(rng) for _ in range(n_lines)]


# ---- held-out eval documents (written as jsonl beside the task YAMLs) ----

def recall_docs(rng: random.Random, n: int) -> list[dict]:
    docs = []
    for i in range(n):
        ex = recall_example(rng, n_pairs=rng.randint(RECALL_CHOICES + 1, RECALL_PAIRS[1]))
        choices, gold = recall_choices(rng, ex)
        docs.append({"id": i, "prompt": ex["prompt"], "choices": choices, "gold": gold})
    return docs


def copy_docs(rng: random.Random, n: int) -> list[dict]:
    docs = []
    for i in range(n):
        ex = copy_example(rng)
        docs.append({"id": i, "prompt": ex["prompt"], "target": ex["answer"].strip(" .")})
    return docs


def text_docs(rng: random.Random, n: int) -> list[dict]:
    return [{"id": i, "text": story(rng)} for i in range(n)]
