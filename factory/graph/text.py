"""Small text helpers shared by the graph modules: sentences, keys, token estimates."""

from __future__ import annotations

import re
import unicodedata

# Markdown decoration that would otherwise look like part of a name or a sentence.
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_MARKS = re.compile(r"(\*\*|__|\*|`|^#{1,6}\s+|^>\s?|^\s*[-+]\s+|^\s*\d+\.\s+)", re.MULTILINE)
# Abbreviations whose period does not end a sentence.
_ABBREV = "".join(rf"(?<!\b{a}\.)" for a in ("Dr", "Mr", "Ms", "St", "Mrs", "Prof", "Jr", "Sr", "vs", "etc", "e.g", "i.e"))
_SENT_END = re.compile(_ABBREV + r"(?<=[.!?])[\"'”’)]*\s+(?=[\"'“‘(]?[A-Z0-9])")


def clean_markdown(text: str) -> str:
    text = _MD_LINK.sub(r"\1", text)
    return _MD_MARKS.sub("", text)


def sentences(text: str) -> list[str]:
    """Sentences of `text`; lines (headings, list items) never run into each other."""
    out = []
    for line in clean_markdown(text).splitlines():
        line = " ".join(line.split())
        if line:
            out.extend(s.strip() for s in _SENT_END.split(line) if s.strip())
    return out


def norm_key(title: str) -> str:
    """The merge key of a title: NFKC, case-folded, spaces collapsed, quotes and a leading 'the' dropped."""
    key = unicodedata.normalize("NFKC", title).casefold()
    key = re.sub(r"[\"'“”‘’`]+", "", key)
    key = " ".join(re.sub(r"[^\w&.\- ]+", " ", key).split()).strip(" .-")
    return key[4:] if key.startswith("the ") else key


def approx_tokens(text: str) -> int:
    """A cheap token estimate (about 4 characters per token) for budgets, not for billing."""
    return (len(text) + 3) // 4
