"""Structured output: JSON schema for the backend, then parse → repair → validate.

Each LLM task declares its output as a pydantic model. Backends that can
constrain decoding get `json_schema(model)`; whatever comes back (constrained
or not) goes through `parse_output`, which tolerates what models really emit:
reasoning in <think> tags, Markdown code fences, prose around the object,
trailing commas and other small syntax slips (json-repair).
"""

from __future__ import annotations

import hashlib
import json
import re

import json_repair
from pydantic import BaseModel, ValidationError

from factory.engines.calls import BUDGET, INVALID_OUTPUT, LLM_ERROR  # noqa: F401 (re-exported)
from factory.text import without_think

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def json_schema(output_model: type[BaseModel] | None) -> dict | None:
    return output_model.model_json_schema() if output_model is not None else None


def schema_hash(output_model: type[BaseModel] | None) -> str | None:
    """Part of every call key: a new output schema is a different request."""
    schema = json_schema(output_model)
    if schema is None:
        return None
    return hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()[:16]


def _candidates(text: str) -> list[str]:
    """Texts worth trying, most literal first."""
    body = without_think(text)
    found = [body]
    fence = _FENCE.search(body)
    if fence:
        found.append(fence.group(1).strip())
    start = min((i for i in (body.find("{"), body.find("[")) if i >= 0), default=-1)
    end = max(body.rfind("}"), body.rfind("]"))
    if start >= 0:
        if end > start:
            found.append(body[start:end + 1])
        found.append(body[start:])  # an object cut off before its last brace
    return found


def _values(text: str):
    """Every JSON value the text can be read as: strict parses first, then json-repair's."""
    cands = _candidates(text)
    for cand in cands:
        try:
            yield json.loads(cand)
        except ValueError:
            continue
    for cand in cands:
        value = json_repair.loads(cand)
        # json-repair returns "" when it finds nothing JSON-like at all.
        if isinstance(value, (dict, list)):
            yield value


def parse_output(text: str | None, output_model: type[BaseModel]) -> tuple[BaseModel | None, str | None]:
    """(validated instance, None) or (None, one-line reason): the first reading that validates wins."""
    if text is None or not text.strip():
        return None, "empty output"
    first_error = None
    try:
        for value in _values(text):
            try:
                return output_model.model_validate(value), None
            except ValidationError as exc:
                first_error = first_error or _describe(exc)
    except RecursionError:
        return None, "JSON nested too deeply"
    return None, first_error or "no JSON found in the output"


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(root)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"schema mismatch at {where}: {first['msg']}{more}"


def finish(text: str | None, output_model: type[BaseModel] | None) -> tuple[str | None, str | None]:
    """(parsed JSON text, error) for one generated text; error is prefixed with its kind."""
    if output_model is None or text is None:
        return None, None
    value, err = parse_output(text, output_model)
    if value is None:
        return None, f"{INVALID_OUTPUT}: {err}"
    return value.model_dump_json(), None

