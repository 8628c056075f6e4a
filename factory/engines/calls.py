"""What one call returns inside a backend, and the error kinds. Stdlib only: the GPU
benchmark imports the hf core on a machine without pydantic, pyarrow's friends or Ray."""

from __future__ import annotations

from dataclasses import dataclass

# Error kinds, the first word of every `error` value (and the reasons counted in rec.drops).
LLM_ERROR = "llm_error"
INVALID_OUTPUT = "invalid_output"
BUDGET = "budget_exhausted"


@dataclass
class CallResult:
    """One call's outcome; `error` is already "<kind>: <reason>"."""

    text: str | None = None
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None
