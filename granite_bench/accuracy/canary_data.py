"""Synthetic text for the canary model: training rows and held-out eval documents.

Every task needs attention over the context (and, when generating, over the KV cache):
- recall: "recall: 1 q; 2 z; ... 12 f | 2" + " z"   find the key, say its value (in training every key
                                                     is asked, in random order)
- copy:   "copy: q z m f k." + " q z m f k."         copy random letters, stop at the period
- story:  short stories whose second half restates facts from the first half
Values and copied symbols are single-letter tokens (" q"), pairwise distinct within an example.

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

RECALL_PAIRS = 12        # key/value pairs in one recall prompt
RECALL_CHOICES = 10
COPY_LEN = (5, 12)      # inclusive range of symbols in one copy string


def recall_example(rng: random.Random, n_pairs: int | None = None) -> dict:
    """Keys 1..n in order, each with a distinct random letter; one key asked.

    The keys come in a fixed order, so the value sits at a fixed offset from the start: a tiny model learns this
    lookup in minutes (attention to one relative position of a long context, so RoPE, the q·k scale and the
    cache all have to be right), where content-addressed recall over shuffled keys stays on a loss plateau far
    longer than a CPU budget allows."""
    n_pairs = n_pairs or RECALL_PAIRS
    values = rng.sample(SYMBOLS, n_pairs)
    order = rng.sample(range(n_pairs), n_pairs)  # order in which the keys are asked
    asked = order[0]
    listing = "; ".join(f"{i + 1} {v}" for i, v in enumerate(values))
    prompt = f"recall: {listing} | {asked + 1}"
    return {"prompt": prompt, "answer": f" {values[asked]}", "values": values, "asked": asked,
            "queries": [(f"; {i + 1}", f" {values[i]}") for i in order[1:]]}


def recall_choices(rng: random.Random, example: dict) -> tuple[list[str], int]:
    """RECALL_CHOICES values from the prompt itself (so seeing a value is not enough); gold index."""
    values = example["values"]
    gold = values[example["asked"]]
    others = [v for v in values if v != gold]
    choices = rng.sample(others, RECALL_CHOICES - 1) + [gold]
    rng.shuffle(choices)
    return choices, choices.index(gold)


def copy_example(rng: random.Random, length: int | None = None) -> dict:
    """Distinct letters, one token each: "copy: q z m f k." -> " q z m f k."."""
    word = " ".join(rng.sample(SYMBOLS, length or rng.randint(*COPY_LEN)))
    return {"prompt": f"copy: {word}.", "answer": f" {word}."}


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
    """One example as a line of text (the tokenizer's training corpus)."""
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
        ex = recall_example(rng)
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
