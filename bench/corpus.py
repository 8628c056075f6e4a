"""A generated journal-like corpus of a given size, for benchmarks (seeded, no downloads)."""

from __future__ import annotations

import random
from pathlib import Path

PEOPLE = ["Tomas Eriksen", "Priya Nair", "Jonah Webb", "Helen Okafor", "Aunt Rosa", "Bea Sutherland",
          "Nadia Kowalczyk", "Callum Ashby", "Odile Fenn", "Ines Marlowe", "Moira Grant", "Ivo Lindgren"]
PLACES = ["Harwick", "Old Mill Gardens", "Lantern Street", "Edinburgh", "Calder River", "Saltmarsh Bay",
          "Quay Road", "Brackley Cross", "Fenwick Weir", "Dock Lane", "Calton Hill", "Portobello"]
THINGS = ["the bakery", "the garden plan", "the half marathon", "pottery class", "the competition bid",
          "a lentil curry", "the silver birch", "switchgrass beds", "the night train", "a new notebook"]
VERBS = ["talked about", "worried about", "walked to", "planned", "finished", "argued over", "celebrated",
         "sketched", "cooked", "remembered"]
MOODS = ["tired", "hopeful", "anxious", "calm", "restless", "content", "proud", "distracted"]


def sentence(rng: random.Random) -> str:
    return (f"{rng.choice(PEOPLE)} and I {rng.choice(VERBS)} {rng.choice(THINGS)} near {rng.choice(PLACES)}, "
            f"and I felt {rng.choice(MOODS)} about it after {rng.randint(2, 59)} minutes.")


def write_corpus(folder: Path, words: int, seed: int = 0, words_per_doc: int = 400) -> int:
    """Write ~`words` words as dated Markdown entries; returns the number of files."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n_docs = max(1, words // words_per_doc)
    for i in range(n_docs):
        body, count = [], 0
        while count < words_per_doc:
            s = sentence(rng)
            body.append(s)
            count += len(s.split())
        year, day = 2020 + i // 365, i % 365
        (folder / f"{year}-{1 + day // 31 % 12:02d}-{1 + day % 28:02d}-{i:06d}.md").write_text(
            f"# Entry {i}\n\n" + " ".join(body) + "\n", encoding="utf-8")
    return n_docs
