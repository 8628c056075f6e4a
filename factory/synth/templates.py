"""Question templates and answer phrasing per voice, from factory/prompts/templates/<voice>.yaml.

A file holds everything that makes rows speak in one voice (see factory/voice.py): the
system prompt, how a question names its passage ("on Monday 3 February 2025" / 'in
"Descaling"'), template questions per kind and entity type, corpus-wide questions with the
cue words and entity types whose findings answer them, refusals, and the instructions
handed to the teacher's prompts. Keeping them in files, not code, lets a deployment add a
voice or reword a question without touching Python.
"""

from __future__ import annotations

import functools
import re
import yaml
from pydantic import BaseModel, ConfigDict, Field

from factory.prompts import HERE

_MONTH = re.compile(r"\b(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\b", re.IGNORECASE)
_YEAR = re.compile(r"\b(1[5-9]|20)\d\d\b")


class GlobalTemplate(BaseModel):
    """A corpus-wide question; `cues` and `types` say which findings answer it (see answers.py)."""

    model_config = ConfigDict(extra="forbid")
    question: str
    cues: list[str] = Field(default_factory=list)
    types: list[str] = Field(default_factory=list)


class Where(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str
    date_title: str
    date: str
    none: str

    def of(self, title: str | None, date: str | None) -> str:
        """How a question (or an answer) names one passage's document."""
        title, date = (title or "").strip(), (date or "").strip()
        if title and looks_like_date(title, date):
            return self.date_title.format(title=title)
        if title:
            return self.title.format(title=title)
        return self.date.format(date=date) if date else self.none


class Phrases(BaseModel):
    model_config = ConfigDict(extra="forbid")
    global_intro: str
    global_reasoning: str
    community_intro: str
    local_reasoning: str
    where_answer: Where
    unanswerable_reasoning: str


class Templates(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    voice: str = ""
    system_prompt: str
    where: Where
    question_style: str
    answer_style: str
    entity: dict[str, list[str]]
    relationship: list[str]
    local: dict[str, list[str]]
    community: list[str]
    personas: list[str]
    global_: list[GlobalTemplate] = Field(alias="global")
    hard_global: list[GlobalTemplate]
    unanswerable: dict[str, list[str]]
    refusals: dict[str, list[str]]
    phrases: Phrases

    def entity_templates(self, entity_type: str | None) -> list[str]:
        return self.entity.get((entity_type or "").lower()) or self.entity["default"]

    def unanswerable_templates(self, entity_type: str) -> list[str]:
        return self.unanswerable.get(entity_type) or self.unanswerable["default"]


def looks_like_date(title: str, date: str | None) -> bool:
    """A journal's entry titles are often its dates ("Monday 3 February 2025")."""
    return bool(date and date in title) or bool(_MONTH.search(title) and _YEAR.search(title))


@functools.cache
def load_templates(voice: str) -> Templates:
    text = (HERE / "templates" / f"{voice}.yaml").read_text(encoding="utf-8")
    return Templates.model_validate({**yaml.safe_load(text), "voice": voice})
