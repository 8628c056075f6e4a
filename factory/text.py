"""The text toolkit every stage reads text with: sentences, words, stopwords, token estimates.

All of it is rule-based and offline. Chunk boundaries, the rule graph extractor, TextRank
summaries, the no-LLM answers, the groundedness score, the near-duplicate filter and the
evaluation metrics rest on these functions, so one text is cut and counted the same way everywhere.
"""

from __future__ import annotations

import functools
import re
import unicodedata

# ---- sentences ------------------------------------------------------------------------------
# Markdown's reading: a single line break inside a paragraph is a soft wrap (hard-wrapped text,
# inline HTML elements put on lines of their own); a blank line ends a paragraph; a heading,
# list item, quote or table row is a line of its own.
_LINE = re.compile(r"[^\n]*\n?")
_BLOCK_LINE = re.compile(r"[ \t]*(?:#{1,6}[ \t]|[-*+>][ \t]|\d{1,3}[.)][ \t]|\|)")
# A sentence ends at . ! ? (closing quotes or brackets may follow) before a space and a capital or digit.
_SENTENCE_END = re.compile(r"([.!?])[\"'”’)\]]*(\s+)(?=[\"'“‘(\[]?[A-Z0-9À-ÖØ-Þ])")
# A period after these does not end a sentence ("Dr. Okafor", "e.g. Tessaro"); nor after a capital
# initial ("J. Brandt"; "I" is a word); "No." and "Fig." only before a number ("No. 5").
ABBREVIATIONS = frozenset("dr mr mrs ms prof st mt jr sr vs etc approx dept univ e.g i.e".split())
_NUMBER_ABBREVIATIONS = frozenset("no fig".split())


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the sentences of `text`, in order. A table row is one
    sentence (never cut at a full stop inside a cell); see `sentences` for the rules."""
    spans: list[tuple[int, int]] = []
    para = -1  # start of the open paragraph of plain lines, -1 when none is open
    para_end = 0
    for m in _LINE.finditer(text or ""):
        start, line = m.start(), m.group()
        if not line:
            break
        blank = not line.strip()
        block = not blank and _BLOCK_LINE.match(line)
        if para >= 0 and (blank or block):
            spans += _prose_spans(text, para, para_end)
            para = -1
        if block:
            end = start + len(line.rstrip())
            if line.lstrip().startswith("|"):
                spans.append((start + len(line) - len(line.lstrip()), end))
            else:  # a list number's full stop ends no sentence
                spans += _prose_spans(text, start, end, start + _BLOCK_LINE.match(line).end())
        elif not blank:
            para = start if para < 0 else para
            para_end = start + len(line.rstrip())
    if para >= 0:
        spans += _prose_spans(text, para, para_end)
    return spans


def _prose_spans(text: str, start: int, end: int, search_from: int | None = None) -> list[tuple[int, int]]:
    out = []
    for m in _SENTENCE_END.finditer(text, start if search_from is None else search_from, end):
        # A full stop right after an abbreviation ends nothing; with a closing quote after it, it does.
        if m.group(1) == "." and m.end(1) == m.start(2) and _abbreviation_before(text, start, m):
            continue
        out.append((start, m.start(2)))  # the closing quotes and brackets stay with their sentence
        start = m.end()
    out.append((start, end))
    # Leading/trailing white space off; an empty piece (a line of spaces) is no sentence.
    return [(a + len(s) - len(s.lstrip()), a + len(s.rstrip())) for a, b in out if (s := text[a:b]).strip()]


def _abbreviation_before(text: str, start: int, m: re.Match) -> bool:
    before = text[start : m.start()].rsplit(None, 1)
    word = before[-1].lstrip("\"'“‘([").rstrip(".") if before else ""
    low = word.lower()
    if low in ABBREVIATIONS or len(word) == 1 and word.isupper() and word != "I":
        return True
    return low in _NUMBER_ABBREVIATIONS and text[m.end() : m.end() + 1].isdigit()


def sentences(text: str) -> list[str]:
    """The sentences of `text`, white space collapsed, Markdown kept (`plain` removes it).

    A sentence ends at . ! ? before a capital or a digit (not after an abbreviation or an
    initial), at a blank line, and at the end of a heading, list item, quote or table row,
    each of which is a line of its own; a table row is one sentence."""
    return [" ".join(text[a:b].split()) for a, b in sentence_spans(text)]


_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_EMPHASIS = re.compile(r"\*\*|__|\*|`")
_MD_LEAD = re.compile(r"^\s*(?:#{1,6}\s+|[-+*]\s+|>\s*|\d{1,3}[.)]\s+)")
_TABLE_RULE = re.compile(r"^[\s|:\-]+$")


def is_table_row(sentence: str) -> bool:
    return sentence.lstrip().startswith("|")


def table_cells(row: str) -> list[str]:
    """The non-empty cells of a Markdown table row, without decoration; none for a rule (|---|)."""
    if _TABLE_RULE.match(row):
        return []
    return [c for c in (plain(c) for c in row.strip().strip("|").split("|")) if c]


def plain(sentence: str) -> str:
    """A sentence without Markdown decoration (links as their text, emphasis, heading and list
    marks); a table row reads as its cells joined by '; ', a table rule as nothing."""
    if is_table_row(sentence):
        row = "; ".join(table_cells(sentence))
        return row if not row or row.endswith((".", "!", "?")) else row + "."
    return _MD_LEAD.sub("", _MD_EMPHASIS.sub("", _MD_LINK.sub(r"\1", sentence))).strip()


def plain_sentences(text: str) -> list[str]:
    """`sentences` without Markdown, each table cell on its own: what names are read from (a
    cell is no part of a sentence with its neighbours, "| Soft | below 7 |")."""
    out: list[str] = []
    for s in sentences(text):
        if is_table_row(s):
            out += table_cells(s)
        elif p := plain(s):
            out.append(p)
    return out


# ---- words ----------------------------------------------------------------------------------
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’\-]*")

# English function words and question scaffolding: they match everything, so they rank nothing.
# Extended, never replaced, where a stage needs more (graph.rules' words that are no names).
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
# Words that date a text without saying what it is about: weekdays and months.
DATE_WORDS = frozenset(
    """monday tuesday wednesday thursday friday saturday sunday january february march april may june july august
    september october november december jan feb mar apr jun jul aug sep sept oct nov dec""".split()
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


@functools.lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A crude stem (plural and tense endings off), so "signed" meets "sign" and "habits" meets "habit"."""
    for suffix in ("ing", "ies", "ied", "es", "ed", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


@functools.lru_cache(maxsize=65536)
def norm_key(title: str) -> str:
    """The merge key of a title: NFKC, case-folded, spaces collapsed, quotes and a leading 'the' dropped."""
    key = unicodedata.normalize("NFKC", title).casefold()
    key = re.sub(r"[\"'“”‘’`]+", "", key)
    key = " ".join(re.sub(r"[^\w&.\- ]+", " ", key).split()).strip(" .-")
    return key[4:] if key.startswith("the ") else key


def shingles(text: str, n: int = 2) -> set[str]:
    """Content words and their n-grams, for near-duplicate detection of short texts: two
    questions that differ only in a name, a date or a number stay apart, while two phrasings
    of the same question about the same subject come together."""
    w = content_words(text) or words(text)
    grams = {" ".join(w[i : i + n]) for i in range(len(w) - n + 1)}
    return grams | set(w)


# ---- tokens and reasoning -------------------------------------------------------------------
CHARS_PER_TOKEN = 4


def estimate_tokens(text: str | None) -> int:
    """A tokenizer-free estimate (about 4 characters per token, rounded up) for prompt and context
    budgets, not for billing."""
    return (len(text or "") + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


# A model's reasoning before its answer; one never closed (a reply cut off while thinking) runs to the end.
THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)


def without_think(text: str | None) -> str:
    """`text` without `<think>` reasoning, white space trimmed: the answer a user reads."""
    return THINK.sub("", text or "").strip()


# ---- evidence: is an answer grounded, does it answer its question -----------------------------
# Words that frame a corpus-wide question without naming its topic ("main themes", "over time"):
# they match every finding, so they rank none.
GLOBAL_FRAMING = frozenset(
    """main theme themes recurring overall change changed changes changing time times across corpus whole pattern
    patterns trend trends big picture important common biggest key period months weeks year life memory evolve
    evolved compare compared comparison different differ most least collection topics topic cover covers come
    appear often notes people person persons places place organizations organization events event concepts concept
    relate related relationship relationships connected role roles matter matters stand""".split()
)


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


def topic_terms(question: str, framing: frozenset[str] = frozenset()) -> frozenset[str]:
    """Stems of the question's words that say what it asks about (no stopwords, framing, dates or numbers)."""
    return frozenset(stem(w) for w in content_words(question)
                     if w not in framing and w not in DATE_WORDS and not w.isdigit())


def relevance(terms: frozenset[str], answer: str) -> float | None:
    """Share of the answer's sentences that mention one of `terms`; None when there is nothing to match
    (a question made only of framing words, "What are the main themes?", is answered by importance)."""
    if not terms:
        return None
    sents = sentence_words(answer)
    if not sents:
        return 0.0
    return sum(bool(terms & {stem(w) for w in ws}) for _, ws in sents) / len(sents)


# ---- targets: what a student is trained to say ---------------------------------------------
# Lineage lives in the qa table's columns; none of it belongs in what the student learns to say.
_SCAFFOLDING = re.compile(
    r"\s*\[(?:Data|Source|Sources|chunk|report|passage|Passage)\b[^\]]*\]"  # [Data: Reports (3)], [chunk 1f2e...]
    r"|\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{16}(?:[0-9a-f]{16}){0,3}\b"  # content-hash ids
    r"|^\s*In [^:\n]{1,120}\(\d{4}-\d{2}-\d{2}\):\s*"  # "In Sunday 22 June 2025 (2025-06-22): "
    r"|\s*\(\d{4}-\d{2}-\d{2}\)(?=:|\s+says\b)",  # a passage label's date: "X (2025-06-22) says"
    re.MULTILINE,
)


# What every piece of scaffolding contains; a text without it is only trimmed (also as an Arrow
# regex, which finds the texts worth cleaning in a whole column: quality.score_batch).
MAYBE_SCAFFOLDING = r"[\[(]|[0-9a-f]{16}"
_MAYBE_SCAFFOLDING = re.compile(MAYBE_SCAFFOLDING)


def clean_target(text: str | None) -> str | None:
    """`text` without citation markers, chunk ids or passage-label scaffolding."""
    if text is None:
        return None
    if not _MAYBE_SCAFFOLDING.search(text):
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


# Every phrase _REFUSAL finds holds one of these: letters without special case folds, and ASCII \b
# before them where re's Unicode \b is, so Arrow's RE2 finds at least the texts re would (a column
# is searched with it first: quality.score_batch).
MAYBE_REFUSAL = r"\bno|n't |cannot |never |unable to "


def is_refusal(answer: str) -> bool:
    return bool(_REFUSAL.search(answer or ""))
