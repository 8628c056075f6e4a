"""GraphRAG local search as a baseline: the question's entities, their relationships and text units.

As GraphRAG's local search builds its context (Edge et al. 2024, `LocalSearchMixedContext`):
entities are picked by name (an entity's title said in the question) and then by embedding
similarity of the question to "title: description"; relationships among the picked entities come
first, then those to the rest of the graph, by weight; text units follow the picked entities'
order, those cited by more picked relationships first. Entities and relationships fill their share
of the context budget, text units the rest.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from factory.config import GraphLocalConfig
from factory.evaluate.fit import Blocks, Meter, Packed
from factory.text import STOPWORDS, words

# Longest entity name, in words, looked up among the question's word n-grams.
MAX_NAME_WORDS = 6


def _key(text: str) -> tuple[str, ...]:
    return tuple(words(text))


class LocalSearch:
    """Context records for a question from the graph tables; see the module docstring."""

    def __init__(self, entities: pa.Table, relationships: pa.Table, chunk_text: Any, cfg: GraphLocalConfig,
                 embedder: Any):
        self.entities = entities.select(["id", "title", "description", "text_unit_ids", "degree"]).to_pylist()
        self.relationships = relationships.select(
            ["source", "target", "description", "weight", "combined_degree", "text_unit_ids"]).to_pylist()
        self.chunk_text = chunk_text  # (chunk id) -> (label, text) or None
        self.cfg = cfg
        self.embedder = embedder
        self._embeddings: np.ndarray | None = None
        self.by_name: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i, e in enumerate(self.entities):
            key = _key(e["title"])
            # A name of function words only ("The", "Me") would match every question.
            if len(key) <= MAX_NAME_WORDS and not set(key) <= STOPWORDS:
                self.by_name[key].append(i)
        self.index = {e["title"]: i for i, e in enumerate(self.entities)}
        self.edges: dict[int, list[int]] = defaultdict(list)
        for j, r in enumerate(self.relationships):
            for end in (r["source"], r["target"]):
                if end in self.index:
                    self.edges[self.index[end]].append(j)

    # ---- which entities ---------------------------------------------------------------
    def named(self, question: str) -> list[int]:
        """Entities whose title is said in the question: longer names first, then by degree."""
        q = _key(question)
        found: dict[int, int] = {}
        for n in range(min(MAX_NAME_WORDS, len(q)), 0, -1):
            for start in range(len(q) - n + 1):
                for i in self.by_name.get(q[start:start + n], ()):
                    found.setdefault(i, n)
        return sorted(found, key=lambda i: (-found[i], -(self.entities[i]["degree"] or 0), i))

    def similar(self, questions: list[str]) -> np.ndarray:
        """Cosine similarity of each question to each entity's "title: description"."""
        if self._embeddings is None:
            texts = [f"{e['title']}: {e['description'] or ''}" for e in self.entities]
            self._embeddings = self.embedder.encode(texts, normalize_embeddings=True, show_progress_bar=False)
        q = self.embedder.encode(questions, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(q) @ np.asarray(self._embeddings).T

    def pick(self, questions: list[str]) -> list[list[int]]:
        """Up to top_entities per question: the named ones, then the most similar."""
        k = min(self.cfg.top_entities, len(self.entities))
        picked = [self.named(q)[:k] for q in questions]
        short = [i for i, p in enumerate(picked) if len(p) < k]
        if short and self.entities:
            sims = self.similar([questions[i] for i in short])
            for i, row in zip(short, sims):
                for j in np.argsort(-row, kind="stable"):
                    if len(picked[i]) >= k:
                        break
                    if int(j) not in picked[i]:
                        picked[i].append(int(j))
        return picked

    # ---- the context ------------------------------------------------------------------
    def records(self, picked: list[int]) -> tuple[list[str], list[str]]:
        """(entity and relationship blocks, text unit blocks) in priority order."""
        chosen = {self.entities[i]["title"] for i in picked}
        rel_ids = list(dict.fromkeys(j for i in picked for j in self.edges[i]))
        inside = {j for j in rel_ids if {self.relationships[j]["source"], self.relationships[j]["target"]} <= chosen}
        outside = [j for j in rel_ids if j not in inside]

        def strength(j: int) -> tuple:
            r = self.relationships[j]
            return (-(r["weight"] or 0), -(r["combined_degree"] or 0), j)

        rels = sorted(inside, key=strength) + sorted(outside, key=strength)
        records = ["-----Entities-----\nentity|description|relationships\n"]
        records += [f"{e['title']}|{_flat(e['description'])}|{len(self.edges[i])}\n"
                    for i in picked for e in (self.entities[i],)]
        records.append("\n-----Relationships-----\nsource|target|description|weight\n")
        records += [f"{r['source']}|{r['target']}|{_flat(r['description'])}|{r['weight'] or 0:g}\n"
                    for j in rels for r in (self.relationships[j],)]
        cited: dict[str, int] = defaultdict(int)
        for j in rels:
            for cid in self.relationships[j]["text_unit_ids"] or []:
                cited[cid] += 1
        units: list[str] = []
        for i in picked:
            own = list(dict.fromkeys(self.entities[i]["text_unit_ids"] or []))
            units += sorted((c for c in own if c not in units), key=lambda c: -cited[c])
        texts = [(c, self.chunk_text(c)) for c in units]
        blocks = [f"[{n + 1}] {label}\n{text}\n\n" for n, (_, (label, text)) in enumerate(t for t in texts if t[1])]
        return records, (["\n-----Sources-----\n"] + blocks if blocks else [])

    def packer(self, picked: list[int], meter: Meter):
        """budget -> the packed context: records in their share of the budget, text units in the rest."""
        records, units = self.records(picked)
        rec_blocks, unit_blocks = Blocks(records, meter), Blocks(units, meter)
        share = self.cfg.text_unit_share

        def build(budget: int) -> Packed:
            a = rec_blocks.pack(int(budget * (1 - share)))
            b = unit_blocks.pack(budget - a.tokens_kept)
            return Packed(a.text + b.text, budget, a.tokens_total + b.tokens_total, a.tokens_kept + b.tokens_kept,
                          a.blocks_total + b.blocks_total, a.blocks_full + b.blocks_full,
                          a.blocks_partial + b.blocks_partial, meter.how)

        return build


def _flat(text: str | None) -> str:
    """A description on one table line."""
    return " ".join((text or "").split()).replace("|", "/")
