"""Answers without an LLM: sentences of the source, and key points of community reports.

The no-LLM path must still teach what RAG would answer: a local answer quotes the
entry the question names (never another one), a global answer gathers the report
findings that bear on its question (cue words and entity types from the voice's
templates, then the question's own words), so two different questions get different
answers. Nothing here writes citations, ids or passage labels into an answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from factory.text import GLOBAL_FRAMING, plain, sentence_words, sentences, stem, topic_terms
from factory.voice import to_second_person

# A local answer quotes at most this many sentences of its source; a global one at most this many points.
MAX_SENTENCES = 3
MAX_POINTS = 8
_EDGE = ".,;:!?\"'“”‘’()[]"
_PRONOUNS = frozenset("he she it they his her its their this these those him them".split())
# A rule report names an entity's finding "Felix (person)": the type is for the graph, not for an answer.
_TYPED = re.compile(r"\s*\((?:person|organization|geo|event|concept|activity|object)\)$", re.IGNORECASE)


def _is_heading(sentence: str) -> bool:
    return sentence.lstrip().startswith("#")


def voiced(text: str, voice: str) -> str:
    return to_second_person(text) if voice == "personal" else text


def starts_with_pronoun(sentence: str) -> bool:
    return sentence.split(" ", 1)[0].lower().strip("\"“'") in _PRONOUNS


class Sentences:
    """A passage's sentences, lower-cased once, for the many focuses asked of one chunk."""

    def __init__(self, text: str):
        self.sents = sentences(text)
        self.lowered = [s.lower() for s in self.sents]
        self._plain: dict[int, str] = {}  # a sentence is quoted for many focuses: made plain once
        self._naming: dict[str, set[int]] = {}  # a name is looked up for many focuses too

    def plain(self, i: int) -> str:
        if i not in self._plain:
            self._plain[i] = plain(self.sents[i])
        return self._plain[i]

    def _with(self, name: str) -> set[int]:
        if name not in self._naming:
            self._naming[name] = {i for i, s in enumerate(self.lowered) if name in s}
        return self._naming[name]

    def naming(self, names: list[str], max_sentences: int = MAX_SENTENCES) -> list[str]:
        """The sentences that name every one of `names` (lower-case; else any of them), in reading order.
        A heading that names them stands for the sentence under it: a heading alone says nothing."""
        found = [self._with(n) for n in names]
        last = len(self.sents) - 1
        for hits in (set.intersection(*found), set.union(*found)) if found else ():
            picked = {i + 1 if i < last and _is_heading(self.lowered[i]) else i for i in hits}
            out = [p for p in map(self.plain, sorted(picked)) if len(p.split()) >= 3]
            if out:
                return out[:max_sentences]
        return []


def source_sentences(names: list[str], text: str, max_sentences: int = MAX_SENTENCES) -> list[str]:
    """Sentences.naming for one focus of one passage."""
    return Sentences(text).naming([n.lower() for n in names], max_sentences)


def describe(description: str) -> str:
    """A description as an answer: its sentences that stand alone. Merged from many passages, a
    sentence opening with a pronoun ("He received the medal in 2002.") has lost what it points to."""
    lines = [line for line in description.splitlines() if line.strip()]
    standalone = [line for line in lines if not starts_with_pronoun(line.strip())]
    return "\n".join(standalone or lines)


# ---- global: findings of community reports ------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    summary: str
    sentences: tuple[tuple[str, frozenset[str], frozenset[str]], ...]  # (sentence, word stems, entity types named)
    community: int
    rank: float


class TitleTypes:
    """Entity types named in a text, found by looking its word n-grams up (not every title in every text)."""

    def __init__(self, title_types: dict[str, str]):
        self.types = {_words(t): k for t, k in title_types.items() if t.strip()}
        self.longest = max((t.count(" ") + 1 for t in self.types), default=0)

    def named(self, text: str) -> frozenset[str]:
        w = _words(text).split()
        return frozenset(self.types[g] for n in range(1, self.longest + 1) for i in range(len(w) - n + 1)
                         if (g := " ".join(w[i : i + n])) in self.types)


def _words(text: str) -> str:
    return " ".join(w.strip(_EDGE) for w in text.lower().split() if w.strip(_EDGE))


def report_findings(report: dict, titles: TitleTypes) -> list[Finding]:
    """A report's findings as points to rank (its summary when it has none)."""
    items = [f for f in (report.get("findings") or []) if f and (f.get("summary") or f.get("explanation"))]
    if not items:
        items = [{"summary": report.get("title") or "", "explanation": report.get("summary") or ""}]
    out = []
    for f in items:
        sents = []
        for sent, ws in sentence_words((f.get("explanation") or "").strip() or (f.get("summary") or "")):
            sents.append((sent, frozenset(map(stem, ws)), titles.named(sent)))
        summary = _TYPED.sub("", (f.get("summary") or "").strip())
        rank = report.get("rank")
        out.append(Finding(summary, tuple(sents), int(report["community"]), 5.0 if rank is None else float(rank)))
    return out


def finding_point(f: Finding, terms: frozenset[str], wanted: frozenset[str]) -> dict | None:
    """The finding as a key point for one question, scored 0-100, or None when it answers nothing the
    question asks for. Score: overlap with the question's terms (its words and cues), whether it names
    an entity of a wanted type, then importance; a question with neither terms nor types ranks by
    importance alone and takes the whole finding. Otherwise the point keeps the finding's sentences
    that match, so two questions drawing on one finding still get different points."""
    if not terms and not wanted:
        keep = [s for s, _, _ in f.sentences]
        score = round(10 * f.rank)
    else:
        matched = [(s, terms & ws, wanted & kinds) for s, ws, kinds in f.sentences]
        keep = [s for s, hit, typed in matched if hit or typed]
        if not keep:
            return None
        overlap = len(set().union(*(hit for _, hit, _ in matched))) / min(len(terms), 3) if terms else 0.0
        typed = 1.0 if any(typed for _, _, typed in matched) else 0.0
        score = round(100 * (0.6 * min(1.0, overlap) + 0.3 * typed + 0.01 * f.rank))
    return {"summary": f.summary, "sentences": keep, "score": max(1, min(100, score)), "reports": [f.community]}


def distinct_points(points: list[dict]) -> list[dict]:
    """Best first, each point without the sentences a better point already says (one evidence
    sentence can stand in several findings of a report); a point left with none is dropped."""
    seen: set[str] = set()
    out = []
    for p in sorted(points, key=lambda p: (-p["score"], p["summary"], p["sentences"])):
        fresh = [s for s in p["sentences"] if s not in seen]
        if fresh or not p["sentences"]:
            seen.update(fresh)
            text = " ".join(fresh)
            out.append({"description": f"{p['summary']}: {text}" if p["summary"] and text else p["summary"] or text,
                        "score": p["score"], "reports": p["reports"]})
    return out


def question_terms(question: str, cues: list[str] | None) -> frozenset[str]:
    return topic_terms(question, GLOBAL_FRAMING) | {stem(c.lower()) for c in cues or ()}


def reduce_points(points: list[dict], voice: str, intro: str, reasoning: str, n_reports: int) -> tuple[str, str]:
    """The strongest points, best first, as one answer (no citations: lineage is in community_ids)."""
    lines = [f"- {voiced(p['description'], voice)}" for p in points]
    groups = "one group" if n_reports == 1 else f"{n_reports} groups"
    kept = "the one point" if len(points) == 1 else f"the {len(points)} points"
    return intro + "\n" + "\n".join(lines), reasoning.format(groups=groups, points=kept)
