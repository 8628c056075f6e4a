"""Small text helpers shared by the graph modules: sentences, keys, token estimates."""

from __future__ import annotations

import functools
import re
import unicodedata

# Markdown decoration that would otherwise look like part of a name or a sentence.
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_MARKS = re.compile(r"(\*\*|__|\*|`|^#{1,6}\s+|^>\s?|^\s*[-+]\s+|^\s*\d+\.\s+)", re.MULTILINE)
_SENT_END = re.compile(r"(?<=[.!?])[\"'”’)]*\s+(?=[\"'“‘(]?[A-Z0-9])")
# A piece ending in one of these abbreviations does not end a sentence ("Dr. Okafor").
_ABBREV_END = re.compile(r"\b(?:Dr|Mr|Ms|St|Mrs|Prof|Jr|Sr|vs|etc|e\.g|i\.e)\.$")


def clean_markdown(text: str) -> str:
    text = _MD_LINK.sub(r"\1", text)
    return _MD_MARKS.sub("", text)


def sentences(text: str) -> list[str]:
    """Sentences of `text`; lines (headings, list items) and table cells never run into each other."""
    out = []
    # A table cell is a line of its own: "| Soft | below 7 |" is not one sentence.
    for line in (cell for row in clean_markdown(text).splitlines() for cell in row.split("|")):
        line = " ".join(line.split())
        pieces: list[str] = []
        for piece in _SENT_END.split(line) if line else ():
            if pieces and _ABBREV_END.search(pieces[-1]):
                pieces[-1] += " " + piece
            else:
                pieces.append(piece)
        out.extend(p.strip() for p in pieces if p.strip())
    return out


@functools.lru_cache(maxsize=65536)
def norm_key(title: str) -> str:
    """The merge key of a title: NFKC, case-folded, spaces collapsed, quotes and a leading 'the' dropped."""
    key = unicodedata.normalize("NFKC", title).casefold()
    key = re.sub(r"[\"'“”‘’`]+", "", key)
    key = " ".join(re.sub(r"[^\w&.\- ]+", " ", key).split()).strip(" .-")
    return key[4:] if key.startswith("the ") else key


def approx_tokens(text: str) -> int:
    """A cheap token estimate (about 4 characters per token) for budgets, not for billing."""
    return (len(text) + 3) // 4
