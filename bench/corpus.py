"""Generated corpora of two shapes for benchmarks (seeded, no downloads).

    python bench/corpus.py --shape short --size 10000 --out /tmp/short     # 10k entries, ≈1.3M tokens
    python bench/corpus.py --shape long --size 800000 --out /tmp/long      # ≈800k words in 2,000 files

* long (`write_corpus`): few long journal entries, one Markdown file each, that
  repeat a dozen names: what the first benchmarks were tuned on.
* short (`write_entries`): many short reference entries (≈480 characters) in
  one JSONL or Parquet file, like a held-out encyclopedia or glossary: a
  title per entry, neutral prose, thousands of distinct names (people, places,
  organizations, events, two-word concepts) reused with Zipf-like frequency,
  and cross-references to other entries' titles (mostly to neighbouring
  entries, so the graph has topical communities, some to popular ones).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import random
from pathlib import Path

# ---- long: a few long journal entries --------------------------------------------------------
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


# ---- short: many reference entries -----------------------------------------------------------
ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t", "th", "v", "w", "z"]
VOWELS = ["a", "e", "i", "o", "u", "ae", "ia", "ou"]
CODAS = ["", "", "n", "r", "l", "s", "th", "nd", "rk", "m", "ck", "t"]
SUFFIXES = {
    "geo": ["River", "Bay", "Valley", "Hill", "Street", "Harbour", "Island", "Forest", "Bridge", "Square"],
    "organization": ["Society", "Institute", "Library", "Company", "College", "Museum", "Press", "Council",
                     "Foundation", "Guild"],
    "event": ["Festival", "Fair", "Conference", "Exhibition", "Regatta"],
}
ADJECTIVES = ["tidal", "coastal", "early", "municipal", "northern", "rural", "industrial", "seasonal", "civic",
              "agrarian", "maritime", "regional", "textile", "mineral", "upland", "botanical", "postal", "naval",
              "public", "monastic", "alpine", "printed", "river", "harbour", "grain", "timber", "copper", "wool",
              "glass", "stone", "salt", "railway", "canal", "market", "parish", "guild", "choral", "legal",
              "medical", "royal"]
NOUNS = ["mill", "survey", "charter", "ledger", "dialect", "almanac", "census", "tariff", "archive", "observatory",
         "ferry", "granary", "tramway", "lighthouse", "foundry", "orchard", "quarry", "tannery", "brewery",
         "printing press", "school board", "land register", "water rights", "trade route", "weather station",
         "seed bank", "map series", "toll road", "fishing fleet", "court record", "pottery kiln", "bell tower",
         "song cycle", "lending library", "town seal", "grazing right", "road atlas", "sluice gate",
         "guild hall", "tithe map"]
KINDS = ["person", "geo", "organization", "event", "concept"]
# Share of each kind among entry titles and among the other names of the vocabulary.
KIND_WEIGHTS = [0.35, 0.25, 0.2, 0.08, 0.12]
ROLES = ["surveyor", "printer", "botanist", "magistrate", "cartographer", "engineer", "archivist", "composer",
         "merchant", "physician", "teacher", "shipwright"]
DECADES = [f"{y}s" for y in range(1720, 1960, 10)]
OPENERS = {
    "person": ["{t} was a {role} active in {g} during the {d}.", "{t} was a {role} born near {g} in the {d}."],
    "geo": ["{t} is a district near {g}, first recorded in the {d}.", "{t} lies between {g} and {g2}."],
    "organization": ["{t} was founded in {g} in the {d}.", "{t} is an association based in {g} since the {d}."],
    "event": ["{t} has been held in {g} since the {d}.", "{t} was first organized in {g} in the {d}."],
    "concept": ["The {t} is a term used in records from {g} in the {d}.", "The {t} describes a practice common around {g}."],
}
SENTENCES = [
    "Records from the {d} name {p} as the main promoter of {t}.",
    "{p} wrote about it in a report for {o}.",
    "{t} is often discussed together with {x}.",
    "A later study by {p} compared it with {x}.",
    "The archive of {o} keeps letters by {p} and {p2}.",
    "Its history is closely linked to {x} and the {c}.",
    "During the {d} the {c} changed how {t} was run.",
    "Visitors from {g} described it in the {e} programme.",
    "{p} and {p2} disputed its origins in correspondence with {o}.",
    "The {c} of {g} is mentioned in the same sources as {t}.",
    "It appears on the maps kept by {o} after the {d}.",
    "A collection at {o} documents the links between {t} and {x}.",
]
SEE_ALSO = "See also {x} and {x2}."
VOCAB_PER_ENTRY = 0.3  # distinct non-title names per entry
TOPIC_ENTRIES = 20  # consecutive entries that share a topic
TOPIC_NAMES = {"person": 4, "geo": 2, "organization": 2, "event": 1, "concept": 2}


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables)).capitalize()


def _name(rng: random.Random, kind: str, given: list[str]) -> str:
    if kind == "person":
        return f"{rng.choice(given)} {_word(rng, rng.choice((2, 2, 3)))}"
    if kind == "concept":
        return f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    return f"{_word(rng, 2)} {rng.choice(SUFFIXES[kind])}"


def _vocabulary(rng: random.Random, n: int, kind: str, given: list[str], taken: set[str]) -> list[str]:
    """`n` distinct names of one kind. Concepts ("adjective noun") run out of combinations in a large
    corpus: a taken one gets a qualifying word, as a reference work's "Soft matter (physics)" does."""
    out: list[str] = []
    for _ in range(n * 20):
        if len(out) == n:
            break
        name = _name(rng, kind, given)
        if kind == "concept" and name.lower() in taken:
            name = f"{name} ({_word(rng, 2)})"
        if name.lower() not in taken:
            taken.add(name.lower())
            out.append(name)
    return out


class Zipf:
    """Draws items with probability ∝ 1 / rank^s (ranks in the list's order)."""

    def __init__(self, items: list[str], s: float = 1.0):
        self.items = items
        self.cum = list(itertools.accumulate(1 / (r + 1) ** s for r in range(len(items))))

    def draw(self, rng: random.Random) -> str:
        return self.items[bisect.bisect_left(self.cum, rng.random() * self.cum[-1])]


def entry_records(entries: int, seed: int = 0, chars: int = 460) -> list[dict]:
    """`entries` records {title, text} of about `chars` characters each."""
    rng = random.Random(seed)
    given = sorted({_word(rng, rng.choice((1, 2))) for _ in range(600)})
    taken: set[str] = set()
    kinds = rng.choices(KINDS, KIND_WEIGHTS, k=entries)
    titles = [_name(rng, k, given) for k in kinds]
    # Titles are distinct: a repeated draw gets a numbered qualifier, as reference works do.
    for i, t in enumerate(titles):
        while t.lower() in taken:
            t = f"{titles[i]} ({_word(rng, 1)})"
        taken.add(t.lower())
        titles[i] = t
    # Other names: fewer than one per entry, each kind drawn Zipf-like from its own list.
    vocab = {k: Zipf(_vocabulary(rng, max(8, int(entries * w * VOCAB_PER_ENTRY)), k, given, taken), s=0.9)
             for k, w in zip(KINDS, KIND_WEIGHTS)}
    popular = Zipf(rng.sample(titles, len(titles)), s=1.0)
    records: list[dict] = []
    for i, (title, kind) in enumerate(zip(titles, kinds)):
        if i % TOPIC_ENTRIES == 0:
            # Neighbouring entries share a topic: a few names that keep coming back together.
            topic = {k: [vocab[k].draw(rng) for _ in range(n)] for k, n in TOPIC_NAMES.items()}

        def ref() -> str:
            # Mostly a neighbouring entry, sometimes a popular one.
            if rng.random() < 0.7:
                return titles[(i + rng.choice((-3, -2, -1, 1, 2, 3))) % entries]
            return popular.draw(rng)

        def name(kind: str) -> str:
            return rng.choice(topic[kind]) if rng.random() < 0.6 else vocab[kind].draw(rng)

        def fill(template: str) -> str:
            return template.format(
                t=title, role=rng.choice(ROLES), d=rng.choice(DECADES), x=ref(), x2=ref(),
                p=name("person"), p2=name("person"), o=name("organization"), g=name("geo"), g2=vocab["geo"].draw(rng),
                e=name("event"), c=name("concept"))

        opener = fill(rng.choice(OPENERS[kind]))
        body = [opener[0].upper() + opener[1:]]
        length = len(body[0])
        for template in rng.sample(SENTENCES, len(SENTENCES)):
            if length >= chars - 60:
                break
            s = fill(template)
            body.append(s)
            length += len(s) + 1
        body.append(fill(SEE_ALSO))
        records.append({"title": title, "text": " ".join(body)})
    return records


def write_entries(folder: Path, entries: int, seed: int = 0, fmt: str = "jsonl") -> Path:
    """Write `entries` short reference entries as one `entries.jsonl` (or `.parquet`) file; returns its path."""
    records = entry_records(entries, seed)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"entries.{fmt}"
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        with path.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return path


def write_shape(folder: Path, shape: str, size: int, seed: int = 0, fmt: str = "jsonl") -> int:
    """A corpus of either shape in `folder`: `size` entries (short) or words (long); returns the documents."""
    if shape == "short":
        write_entries(folder, size, seed, fmt)
        return size
    return write_corpus(folder, size, seed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=("short", "long"), default="short")
    p.add_argument("--size", type=int, default=10_000, help="entries (short) or words (long)")
    p.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl", help="file format of the short shape")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder to write")
    a = p.parse_args()
    n = write_shape(Path(a.out), a.shape, a.size, a.seed, a.format)
    print(f"{n:,} documents ({a.shape}) in {a.out}")


if __name__ == "__main__":
    main()
