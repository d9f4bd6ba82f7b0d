"""The bundled demo dataset: a few hundred short prompt/completion pairs.

Written deterministically by code, so the studio works offline with nothing
downloaded. The tasks are simple and regular (small sums, word reversal,
colours, opposites) so a tiny model learns them within a couple of minutes and
its loss falls visibly.
"""

from __future__ import annotations

import csv
import io
import random

DEMO_FILENAME = "demo_qa.csv"

_COLOURS = {
    "a banana": "yellow", "the sky": "blue", "grass": "green", "snow": "white",
    "coal": "black", "a tomato": "red", "an orange": "orange", "a plum": "purple",
    "a lemon": "yellow", "the sea": "blue", "a leaf": "green", "milk": "white",
    "a cherry": "red", "ink": "black", "a carrot": "orange", "a grape": "purple",
}
_OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "fast": "slow", "day": "night",
    "open": "closed", "light": "dark", "early": "late", "full": "empty",
    "happy": "sad", "loud": "quiet", "old": "new", "wet": "dry", "near": "far",
    "high": "low", "hard": "soft", "left": "right", "long": "short",
}
_WORDS = [
    "cat", "dog", "tree", "house", "river", "stone", "cloud", "apple", "bread",
    "music", "light", "green", "water", "table", "chair", "paper", "train",
    "plant", "horse", "mouse", "sugar", "lemon", "piano", "robot", "storm",
]


def demo_rows(seed: int = 0, n_arith: int = 200) -> list[dict[str, str]]:
    """Return the demo examples as ``{"prompt", "completion"}`` rows."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    for _ in range(n_arith):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        rows.append({"prompt": f"What is {a} plus {b}?", "completion": f"{a} plus {b} is {a + b}."})
    for word in _WORDS:
        rows.append({"prompt": f"Spell {word} backwards.", "completion": f"{word} backwards is {word[::-1]}."})
        rows.append({"prompt": f"How many letters are in {word}?", "completion": f"{word} has {len(word)} letters."})
    for thing, colour in _COLOURS.items():
        rows.append({"prompt": f"What colour is {thing}?", "completion": f"{thing.capitalize()} is {colour}."})
    for word, opposite in _OPPOSITES.items():
        rows.append({"prompt": f"What is the opposite of {word}?", "completion": f"The opposite of {word} is {opposite}."})
        rows.append({"prompt": f"What is the opposite of {opposite}?", "completion": f"The opposite of {opposite} is {word}."})
    rng.shuffle(rows)
    return rows


def demo_csv_bytes(seed: int = 0) -> bytes:
    """The demo dataset as a UTF-8 CSV file (what the studio stores on disk)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["prompt", "completion"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(demo_rows(seed))
    return buf.getvalue().encode("utf-8")
