"""What `run_llm` and a backend exchange: the `Backend` functions, a request row, a result row.

Backends import this module, never base.py (which registers them), so the registry in base.py
imports each backend module directly and no backend reaches back into the layer that calls it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

import pyarrow as pa

from factory.engines.calls import CallResult
from factory.engines.structured import finish

if TYPE_CHECKING:
    from pydantic import BaseModel

    from factory.config import EngineConfig
    from factory.engines.cache import CallJournal

# What a backend receives (one row per call) and must return (one row per call).
REQUEST_COLUMNS = ("key", "messages", "max_tokens", "temperature")
RESULT_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("generated_text", pa.string()),
    ("parsed", pa.string()),
    ("error", pa.string()),
    ("input_tokens", pa.int64()),
    ("output_tokens", pa.int64()),
    ("finish_reason", pa.string()),
])


class Backend(Protocol):
    """One engine (a module with these three functions, registered in base.BACKENDS)."""

    def request_extras(self, cfg: EngineConfig) -> dict:
        """Request settings beyond the common ones that change a reply: part of every call key."""

    def preflight(self, cfg: EngineConfig) -> None:
        """Raise UserError when the engine cannot work (server unreachable, key rejected, model missing)."""

    def generate(self, ds: Any, cfg: EngineConfig, output_model: type[BaseModel] | None,
                 journal: Callable[..., CallJournal]) -> Any:
        """A Ray Dataset of REQUEST_COLUMNS rows -> one of RESULT_SCHEMA rows; each call is journaled as it ends."""


def result_table(keys: list[str], results: list[CallResult], output_model: type[BaseModel] | None) -> pa.Table:
    """Backends call this in their workers: structured parsing happens next to the call."""
    parsed, errors = [], []
    for r in results:
        if r.error is not None:
            p, e = None, r.error
        else:
            p, e = finish(r.text, output_model)
        parsed.append(p)
        errors.append(e)
    return pa.table(
        {
            "key": keys,
            "generated_text": [r.text for r in results],
            "parsed": parsed,
            "error": errors,
            "input_tokens": [int(r.input_tokens or 0) for r in results],
            "output_tokens": [int(r.output_tokens or 0) for r in results],
            "finish_reason": [r.finish_reason for r in results],
        },
        schema=RESULT_SCHEMA,
    )
