"""Whose voice a corpus is written in, and how questions and answers should speak about it.

    personal   a journal or private notes, written in the first person: questions are the
               owner's ("What did I write about ...?"), answers speak to them ("You wrote ...").
    reference  a manual, glossary, wiki or company docs: questions and answers are neutral
               ("What does the manual say about ...?", "X is ...").

`detect_voice` decides from the text itself: private writing says "I", "me" and "my" often
(about 3-5% of its words in the bundled journal); reference prose almost never does outside
quotations (manuals address "you" instead).
"""

from __future__ import annotations

import re
from typing import Iterable, Literal

Voice = Literal["personal", "reference"]
VOICES = ("personal", "reference")
# Share of first-person-singular words above which a corpus reads as private writing.
PERSONAL_THRESHOLD = 0.01
# Words sampled for the decision: enough for a stable rate, cheap on any corpus.
SAMPLE_WORDS = 200_000

_WORD = re.compile(r"[A-Za-z][A-Za-z'’]*")
_FIRST_PERSON = frozenset("i me my mine myself i'm i've i'd i'll".split())


def first_person_rate(texts: Iterable[str]) -> float:
    """Share of words that are first-person singular pronouns, over the first SAMPLE_WORDS words."""
    total = hits = 0
    for text in texts:
        for w in _WORD.findall(text or ""):
            total += 1
            hits += w.lower().replace("’", "'") in _FIRST_PERSON
        if total >= SAMPLE_WORDS:
            break
    return hits / total if total else 0.0


def detect_voice(texts: Iterable[str]) -> Voice:
    return "personal" if first_person_rate(texts) >= PERSONAL_THRESHOLD else "reference"


def resolve_voice(setting: str, texts: Iterable[str]) -> Voice:
    """`setting` is personal | reference | auto (decided from `texts`)."""
    return setting if setting in VOICES else detect_voice(texts)  # type: ignore[return-value]


# First person of the corpus owner -> second person of an assistant speaking to them.
_SECOND_PERSON = {
    "i": "you", "me": "you", "my": "your", "mine": "yours", "myself": "yourself",
    "i'm": "you're", "i've": "you've", "i'd": "you'd", "i'll": "you'll",
    "we": "you", "us": "you", "our": "your", "ours": "yours", "ourselves": "yourselves",
    "we're": "you're", "we've": "you've", "we'd": "you'd", "we'll": "you'll",
}
# "I am/was" becomes "you are/were": the verb must follow the pronoun.
_VERB_AFTER = {"am": "are", "was": "were"}
_PRONOUN = re.compile(r"\b(" + "|".join(sorted((re.escape(k) for k in _SECOND_PERSON), key=len, reverse=True))
                      + r")\b(\s+(?:am|was)\b)?", re.IGNORECASE)


def to_second_person(text: str) -> str:
    """Rewrite the owner's first person as "you": a quoted journal sentence becomes something an
    assistant can say to its owner ("I was tired" -> "You were tired")."""

    def sub(m: re.Match) -> str:
        word = m.group(1)
        key = word.lower().replace("’", "'")
        out = _SECOND_PERSON[key]
        # "I" is capitalized anywhere; "you" only where a sentence starts. Other pronouns keep their case.
        before = text[: m.start()].rstrip()
        start = not before or before[-1] in ".!?:" or (before[-1] in "\"“" and before[:-1][-1:] in ("", " ", "\n", "("))
        if (start if key.startswith("i") and key in ("i", "i'm", "i've", "i'd", "i'll") else word[0].isupper()):
            out = out[0].upper() + out[1:]
        verb = m.group(2)
        if verb:
            v = verb.strip().lower()
            out += verb[: len(verb) - len(verb.lstrip())] + _VERB_AFTER[v]
        return out

    # "I" in the middle of a sentence is always the pronoun; a bare "us" or "me" is too.
    text = text or ""
    return _PRONOUN.sub(sub, text)
