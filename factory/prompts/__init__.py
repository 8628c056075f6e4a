"""Prompts are files: `<task>.md` beside this module, one per LLM task.

A file holds a `<<system>>` section and a `<<user>>` section; `$name`
placeholders (string.Template) are filled per row, so JSON examples in a
prompt need no escaping. Each prompt's hash goes into every row it produced.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

HERE = Path(__file__).parent
_SECTION = re.compile(r"^<<(system|user)>>\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Prompt:
    task: str
    system: str
    user: str
    hash: str

    def messages(self, **values: object) -> list[dict[str, str]]:
        msgs = []
        if self.system:
            msgs.append({"role": "system", "content": Template(self.system).substitute(values)})
        msgs.append({"role": "user", "content": Template(self.user).substitute(values)})
        return msgs


@functools.cache
def load(task: str) -> Prompt:
    path = HERE / f"{task}.md"
    text = path.read_text(encoding="utf-8")
    parts = _SECTION.split(text)
    sections = {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    if "user" not in sections:
        raise ValueError(f"{path}: no <<user>> section")
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Prompt(task, sections.get("system", ""), sections["user"], digest)


def hashes() -> dict[str, str]:
    """Hash of every prompt and question-template file, for the manifest."""
    out = {p.stem: load(p.stem).hash for p in sorted(HERE.glob("*.md"))}
    for p in sorted(HERE.glob("templates/*.yaml")):
        out[f"templates/{p.stem}"] = hashlib.sha256(p.read_bytes()).hexdigest()[:12]
    return out
