"""A scripted teacher for whole-pipeline tests: a valid, grounded reply to any task's prompt.

The reply depends only on the request (messages and requested JSON schema), so
two runs of the same corpus get the same answers: a crashed-and-resumed run
can be compared with an uninterrupted one. Structured tasks are recognised by
the schema name the openai engine sends (`response_format.json_schema.name`);
a task without a schema gets prose taken from its evidence. Strings are copied
from the evidence in the prompt, so answers pass the groundedness filters, and
only from the part of the prompt that should hold the answer: a local answer
comes from the "Source passage" section alone, so a prompt that does not show
the source chunk gets a refusal (answerable: false), as a real model would.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from typing import Any

_INSTRUCTION = re.compile(
    r"^(Question:|Reply with JSON|Reason |First reason|List the key|Write |Persona:|Return |Read the passage|"
    r"Focus:|Below are|Only state|These notes)"
)
_NAME = re.compile(r"\b([A-Z][a-z]+(?:\s+(?:&\s+)?[A-Z][a-z]+)*)\b")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_STOP = {"The", "A", "An", "I", "We", "It", "He", "She", "They", "This", "That", "My", "On", "In", "At", "And", "But"}


def digest(request: dict) -> str:
    """What identifies a call: its messages and requested schema (not sampling settings)."""
    blob = json.dumps([request.get("messages"), schema_name(request)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def schema_name(request: dict) -> str | None:
    fmt = request.get("response_format") or {}
    return (fmt.get("json_schema") or {}).get("name")


def evidence(request: dict) -> list[str]:
    """Sentences of the last user message that are data, not instructions."""
    user = request["messages"][-1]["content"]
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", user) if p.strip()]
    data = [p for p in paragraphs if not _INSTRUCTION.match(p)] or paragraphs
    text = " ".join(" ".join(line for line in p.splitlines() if not line.startswith("[")) for p in data)
    out = [s.strip() for s in _SENTENCE.split(text) if len(s.split()) >= 4]
    return out or [text.strip() or "Nothing was written."]


def names(text: str) -> list[str]:
    seen: dict[str, None] = {}
    for m in _NAME.finditer(text):
        name = m.group(1)
        if name.split()[0] in _STOP and " " not in name:
            continue
        seen.setdefault(name.removeprefix("The "), None)
    return list(seen)


def passage(request: dict) -> str:
    user = request["messages"][-1]["content"]
    return user.split("Passage:", 1)[1] if "Passage:" in user else user


def extraction(request: dict) -> dict:
    if request["messages"][-1]["content"].count("Passage:") == 0:  # gleaning round: nothing more to add
        return {"entities": [], "relationships": []}
    text = passage(request)
    found = names(text)[:8]
    sentences = [s for s in _SENTENCE.split(text) if s.strip()]

    def about(name: str) -> str:
        return next((s.strip() for s in sentences if name in s), f"{name} is mentioned.")

    entities = [{"title": n, "type": "person" if len(n.split()) == 2 else "object", "description": about(n)} for n in found]
    rels = [{"source": a, "target": b, "description": f"{a} and {b} appear together. {about(a)}", "strength": 5}
            for a, b in itertools.pairwise(found)]
    return {"entities": entities, "relationships": rels}


def fill(schema: dict, defs: dict, sentences: list[str], path: str = "") -> Any:
    """A value valid for `schema`, with strings taken from the evidence (deterministic)."""
    if "$ref" in schema:
        return fill(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, sentences, path)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return fill(options[0], defs, sentences, path)
    kind = schema.get("type")
    if kind == "object":
        return {k: fill(v, defs, sentences, f"{path}.{k}") for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        n = max(schema.get("minItems", 0), 2)
        return [fill(schema.get("items", {}), defs, sentences, f"{path}[{i}]") for i in range(n)]
    if kind == "string":
        if "enum" in schema:
            return schema["enum"][0]
        i = int(hashlib.sha256(path.encode()).hexdigest(), 16) % len(sentences)
        return " ".join(sentences[i:i + 2])
    if kind in ("integer", "number"):
        return 1 if path.endswith("]") else 5
    if kind == "boolean":
        return False
    return None


def section(user: str, start: str, end: str | None = None) -> str | None:
    """The text of the prompt between the line starting `start` and the line starting `end`, or None
    when the prompt does not show that section."""
    if start not in user:
        return None
    text = user.split(start, 1)[1]
    text = text.split("\n", 1)[1] if "\n" in text else ""
    return text.split(f"\n{end}", 1)[0].strip() if end else text.strip()


def line_after(user: str, marker: str) -> str:
    return user.split(marker, 1)[1].strip().split("\n", 1)[0].strip() if marker in user else ""


def naming(text: str, focus: str) -> list[str]:
    """The sentences of `text` that name every part of `focus` ("A and B" names both)."""
    parts = [p.strip().lower() for p in focus.split(" and ") if p.strip()]
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(("#", "Passage"))]
    sents = [x.strip() for line in lines for x in _SENTENCE.split(line) if x.strip()]
    return [x for x in sents if all(p in x.lower() for p in parts)]


def reply(request: dict) -> str:
    """The teacher's reply content for one chat-completions request: built only from what the
    prompt shows, so a prompt that hides the evidence gets a refusal or a wrong answer, never the
    right one by accident."""
    name = schema_name(request)
    user = request["messages"][-1]["content"]
    sentences = evidence(request)
    if name == "Extraction":
        return json.dumps(extraction(request))
    if name == "LocalQuestionOut":
        where = line_after(user, "Passage (").rsplit("):", 1)[0]
        focus = line_after(user, "Focus:")
        found = naming(section(user, "Passage (", "Focus:") or "", focus)
        if not found:
            return json.dumps({"declined": True, "question": "", "reasoning": f"The passage does not name {focus}."})
        return json.dumps({"declined": False, "question": f"What happened with {focus} {where}?", "reasoning": found[0]})
    if name == "LocalAnswerOut":
        focus = user.split("\nAbout ", 1)[1].split(": ", 1)[0] if "\nAbout " in user else ""
        source = section(user, "Source passage", "About ")
        found = naming(source or "", focus)
        if not found:  # the source passage is not in the prompt, or does not answer: say so
            return json.dumps({"answerable": False, "reasoning": "The source does not say.", "answer": ""})
        return json.dumps({"answerable": True, "reasoning": f"The source passage says: {' '.join(found)}",
                           "answer": " ".join(found[:2])})
    if name == "SubjectQAOut":
        subject = line_after(user, "Subjects:" if "Subjects:" in user else "Subject:").rsplit(" (", 1)[0]
        description = line_after(user, "description:" if "Relationship description:" in user else "Description:")
        quoted = naming(section(user, "Source passages:") or "", subject)
        return json.dumps({"question": f"What is known about {subject}?", "reasoning": " ".join([description] + quoted[:3]),
                           "answer": " ".join([description] + quoted[:1])})
    if name == "QuestionsOut":
        persona = line_after(user, "Persona:") or "a reader"
        if "held-out" in request["messages"][0]["content"]:  # the hard set: no entity names
            return json.dumps({"questions": [f"As {persona}, what changed most over the whole period?",
                                             f"As {persona}, which patterns recur across everything?"]})
        topics = names(section(user, "Summary of the corpus", "Persona:") or "")[:4] or ["the corpus"]
        return json.dumps({"questions": [f"As {persona}, how did things around {t} change over the whole period?"
                                         for t in topics]})
    if name == "MapOut":  # each report's summary is a point, more important where the report names what is asked
        asked = [n for n in names(line_after(user, "Question:")) if n != "As"]
        reports = re.findall(r"^Report (\d+): ([^\n]*)\n([^\n]+)", user, re.MULTILINE)
        return json.dumps({"points": [{"description": summary, "reports": [int(n)],
                                       "score": 90 if any(a in f"{title} {summary}" for a in asked) else 60}
                                      for n, title, summary in reports if summary.strip()]})
    if name == "AnswerOut":  # the reduce: the key points it was shown
        points = re.findall(r"^- \(importance \d+\) (.+)$", user, re.MULTILINE)
        return json.dumps({"reasoning": " ".join(points[:3]) or " ".join(sentences[:3]),
                           "answer": " ".join(points[:2]) or " ".join(sentences[:2])})
    if name == "JudgeOut":
        return json.dumps({"support": 9, "answers_question": 9, "reason": "The answer restates the evidence."})
    fmt = (request.get("response_format") or {}).get("json_schema")
    if fmt and fmt.get("schema"):
        schema = fmt["schema"]
        return json.dumps(fill(schema, schema.get("$defs", {}), sentences))
    return " ".join(sentences[:3])
