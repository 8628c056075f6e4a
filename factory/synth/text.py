"""Lexical helpers shared by synthesis: tokens, sentences, overlap, token estimates.

All of it is rule-based and offline: the no-LLM path, the groundedness score
and the near-duplicate filter rest on these few functions.
"""

from __future__ import annotations

import functools
import re

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’\-]*")
_SENTENCE = re.compile(r"(?<=[.!?])[\"”’)\]]*\s+(?=[\"“‘(\[]?[A-Z0-9])|\n{2,}|\n(?=[-*#] |\|)")

# Function words and question scaffolding: they match everything, so they rank nothing.
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having
    he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
    nor not now of off on once only or other our ours ourselves out over own same she should so some such than
    that the their theirs them themselves then there these they this those through to too under until up very
    was we were what when where which while who whom why will with would you your yours yourself yourselves
    tell know say said says write wrote written note noted entry entries journal describe described happen
    happened happens thing things anything something also get got one ever much many like""".split()
)


# Words that frame a corpus-wide question without naming its topic ("main themes", "over time"):
# they match every finding, so they rank none.
GLOBAL_FRAMING = frozenset(
    """main theme themes recurring overall change changed changes changing time times across corpus whole pattern
    patterns trend trends big picture important common biggest key period months weeks year life memory evolve
    evolved compare compared comparison different differ most least collection topics topic cover covers come
    appear often notes people person persons places place organizations organization events event concepts concept
    relate related relationship relationships connected role roles matter matters stand""".split()
)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (apostrophes and hyphens kept inside words)."""
    found = _WORD.findall(text or "")
    # One lower() over all the words instead of one per word (a word holds no space).
    return " ".join(found).lower().replace("’", "'").split(" ") if found else []


def content_words(text: str) -> list[str]:
    """Words that carry meaning: no stopwords, no single letters (single digits stay)."""
    return list(_content_words(text or ""))


# Small: a row's answer and question are each read by several scores in turn, never again after.
@functools.lru_cache(maxsize=256)
def _content_words(text: str) -> tuple[str, ...]:
    return tuple(w for w in words(text) if w not in STOPWORDS and (len(w) > 1 or w.isdigit()))


# A period after these (or after a single capital, an initial) does not end a sentence.
_ABBREVIATIONS = frozenset("dr mr mrs ms prof st mt jr sr vs etc no fig approx dept univ".split())


def sentences(text: str) -> list[str]:
    """Split prose into sentences; headings, list items and table rows count as their own (a table
    row is never cut at a full stop inside a cell)."""
    out: list[str] = []
    for block in _TABLE_ROW.split(text or ""):
        if block.startswith("|"):
            out.append(" ".join(block.split()))
        elif block.strip():
            out += _prose_sentences(block)
    return out


# A Markdown table row: a whole line that starts with "|".
_TABLE_ROW = re.compile(r"(?m)^(\|[^\n]*)$")


def _prose_sentences(text: str) -> list[str]:
    out, start = [], 0
    for m in _SENTENCE.finditer(text):
        before = text[start : m.start()].rsplit(None, 1)
        last = before[-1].rstrip(".").lower() if before else ""
        if text[m.start() - 1 : m.start()] == "." and (last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())):
            continue
        out.append(text[start : m.start()])
        start = m.end()
    out.append(text[start:])
    return [" ".join(p.split()) for p in out if p.strip()]


@functools.lru_cache(maxsize=16384)
def sentence_words(text: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """The sentences of a passage with their content words, memoized: one chunk is
    retrieved for many questions, and splitting it again each time was most of the cost."""
    return tuple((s, frozenset(content_words(s))) for s in sentences(text))


@functools.lru_cache(maxsize=16384)
def _paragraph_words(text: str) -> frozenset[str]:
    return frozenset(content_words(text))


def support(claim: str, evidence: str) -> float:
    """Share of the claim's content words found in the evidence (0..1; 1.0 for an empty claim)."""
    claim_words = content_words(claim)
    if not claim_words:
        return 1.0
    # Evidence is passages joined by blank lines, and the same passages back many rows: their
    # word sets are memoized. No word spans a blank line, so the union is the whole's set.
    ev = frozenset().union(*map(_paragraph_words, (evidence or "").split("\n\n")))
    return sum(w in ev for w in claim_words) / len(claim_words)


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (about 4 characters per token) used for prompt budgets."""
    return max(1, len(text or "") // 4)


def shingles(text: str, n: int = 2) -> set[str]:
    """Content words and their n-grams, for near-duplicate detection of short texts: two
    questions that differ only in a name, a date or a number stay apart, while two phrasings
    of the same question about the same subject come together."""
    w = content_words(text) or words(text)
    grams = {" ".join(w[i : i + n]) for i in range(len(w) - n + 1)}
    return grams | set(w)


# ---- targets: what a student is trained to say ---------------------------------------------
# Lineage lives in the qa table's columns; none of it belongs in what the student learns to say.
_SCAFFOLDING = re.compile(
    r"\s*\[(?:Data|Source|Sources|chunk|report|passage|Passage)\b[^\]]*\]"  # [Data: Reports (3)], [chunk 1f2e...]
    r"|\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{16}(?:[0-9a-f]{16}){0,3}\b"  # content-hash ids
    r"|^\s*In [^:\n]{1,120}\(\d{4}-\d{2}-\d{2}\):\s*"  # "In Sunday 22 June 2025 (2025-06-22): "
    r"|\s*\(\d{4}-\d{2}-\d{2}\)(?=:|\s+says\b)",  # a passage label's date: "X (2025-06-22) says"
    re.MULTILINE,
)


_HEX_RUN = re.compile(r"[0-9a-f]{16}")


def clean_target(text: str | None) -> str | None:
    """`text` without citation markers, chunk ids or passage-label scaffolding."""
    if text is None:
        return None
    if "[" not in text and "(" not in text and not _HEX_RUN.search(text):
        return text.strip() or None  # nothing to remove: the common case, and a cheap test
    out = _SCAFFOLDING.sub("", text)
    return re.sub(r"[ \t]{2,}", " ", re.sub(r" +([.,;:])", r"\1", out)).strip() or None


# A teacher that could not answer says so in words like these; such a row is never a training target
# (unanswerable rows, whose refusals are written and checked on purpose, are the only refusals kept).
_REFUSAL = re.compile(
    r"\b(?:I (?:do not|don't|cannot|can't|could not|couldn't) (?:know|recall|remember|find|tell|say|answer)"
    r"|(?:do|does|did) not (?:contain|mention|say|include|provide)|(?:doesn't|don't|didn't) (?:contain|mention|say)"
    r"|no (?:information|mention|record)|not (?:mentioned|stated|specified|provided) (?:in|anywhere)"
    r"|(?:cannot|can't|unable to) (?:be )?(?:answer|determine|tell)|rather not guess"
    r"|(?:doesn't|does not|never) (?:come up|mention)|nothing (?:in|you)\b[^.]{0,60}\b(?:mentions?|links?)\b"
    r"|not mentioned anywhere|has no information)",
    re.IGNORECASE,
)


def is_refusal(answer: str) -> bool:
    return bool(_REFUSAL.search(answer or ""))


# ---- does an answer answer its question ---------------------------------------------------
# Words that place or frame a question without saying what it asks: dates, weekdays, months.
_PLACING = frozenset(
    """monday tuesday wednesday thursday friday saturday sunday january february march april may june july august
    september october november december jan feb mar apr jun jul aug sep sept oct nov dec""".split()
)


@functools.lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A crude stem (plural and tense endings off), so "signed" meets "sign" and "habits" meets "habit"."""
    for suffix in ("ing", "ies", "ied", "es", "ed", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def topic_terms(question: str, framing: frozenset[str] = frozenset()) -> frozenset[str]:
    """Stems of the question's words that say what it asks about (no stopwords, framing, dates or numbers)."""
    return frozenset(stem(w) for w in content_words(question)
                     if w not in framing and w not in _PLACING and not w.isdigit())


def relevance(terms: frozenset[str], answer: str) -> float | None:
    """Share of the answer's sentences that mention one of `terms`; None when there is nothing to match
    (a question made only of framing words, "What are the main themes?", is answered by importance)."""
    if not terms:
        return None
    sents = sentence_words(answer)
    if not sents:
        return 0.0
    return sum(bool(terms & {stem(w) for w in ws}) for _, ws in sents) / len(sents)
