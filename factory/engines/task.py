"""`LLMTask`: one LLM step declared once, in the spirit of distilabel's `Task`.

A task says what is particular to its step: its name (call-cache folder, stats key and, unless
`prompt_file` says otherwise, its prompt file in factory/prompts/), the pydantic model its reply
must validate against (None: free text), how an input row becomes chat messages (`messages`) and
how a reply becomes output columns (`parse`, declared in `fields`). `run` does the rest the same
way for every step:

    rows -> messages (in Ray workers) -> run_llm (cached, resumable, budgeted) -> parse -> rows

A failed call (llm_error, invalid_output, budget_exhausted) is counted once, by run_llm, per error
kind in the stage's drops; the task then leaves the row out (`keep_failed = False`) or keeps it with
its `error` and the task's columns as they were (`keep_failed = True`), for steps that fall back to
rules or report the failure downstream. `parse` runs only for successful replies; it may set `error`
itself (a declared refusal) or return None to leave the row out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel

from factory.engines.structured import INVALID_OUTPUT
from schemas import MESSAGE

if TYPE_CHECKING:
    from factory.config import EngineConfig

MESSAGES = pa.list_(MESSAGE)
# What run_llm adds that no step reads after its task has parsed the reply.
RAW = ("messages", "generated_text", "parsed", "input_tokens", "output_tokens")
REPLY = ("messages", "generated_text")
# Which engine, model and prompt wrote a row.
LINEAGE = {"engine": pa.string(), "model": pa.string(), "prompt_hash": pa.string()}


class LLMTask:
    """One LLM step (see the module docstring); subclasses set the attributes and override messages/parse."""

    name: str = ""
    prompt_file: str | None = None
    output_model: type[BaseModel] | None = None
    # The columns `parse` writes (beside `error`, and the LINEAGE columns when `lineage`).
    fields: ClassVar[dict[str, pa.DataType]] = {}
    keep_failed: bool = False
    lineage: bool = True
    # Rows arrive with their `messages`, built from this task's prompt where the stage's state lives
    # (an actor holding a retriever, a graph index).
    prompted: bool = False
    # Keep `messages` and `generated_text` for a follow-up call that continues the conversation.
    keep_reply: bool = False
    # Input columns that do not travel on.
    drop: tuple[str, ...] = ()

    @property
    def prompt(self):
        from factory import prompts

        return prompts.load(self.prompt_file or self.name)

    def messages(self, row: dict) -> list[dict]:
        """The chat messages for one input row: by default the prompt file filled with the row's values."""
        return self.prompt.messages(**row)

    def parse(self, row: dict, reply: Any) -> dict | None:
        """Output columns from one successful reply (an `output_model` instance, or the text)."""
        return {}

    # ---- the same for every task ---------------------------------------------------------
    def run(self, run: Any, rec: Any, ds: Any, engine: EngineConfig):
        """A Ray Dataset of input rows -> the same rows (failed ones kept or not) with `fields`, `error`
        and, with `lineage`, engine/model/prompt_hash."""
        from factory.engines.base import run_llm

        if not self.prompted:
            ds = ds.map_batches(_with_messages, fn_kwargs={"task": self}, batch_format="pyarrow")
        out = run_llm(run, rec, ds, engine, self.name, output_model=self.output_model, prompt_file=self.prompt_file)
        return out.map_batches(_parsed, fn_kwargs={"task": self}, batch_format="pyarrow")

    def run_rows(self, run: Any, rec: Any, rows: list[dict], engine: EngineConfig) -> list[dict]:
        """`run` for rows the driver holds (a few per question or community): output rows, in no set order."""
        import ray.data

        if not rows:
            return []
        return self.run(run, rec, ray.data.from_items(rows), engine).take_all()

    def columns(self) -> dict[str, pa.DataType]:
        return {**self.fields, **(LINEAGE if self.lineage else {}), "error": pa.string()}

    def finish(self, row: dict) -> dict | None:
        """One row of run_llm's output -> this task's columns, or None to leave the row out."""
        error, values = row.get("error"), {}
        if error is None:
            if self.output_model is None:
                values = self.parse(row, row.get("generated_text"))
            elif row.get("parsed") is None:  # no text and no error: nothing a backend should return
                error = f"{INVALID_OUTPUT}: empty output"
            else:
                values = self.parse(row, self.output_model.model_validate_json(row["parsed"]))
            if values is None:
                return None
        if error is not None and not self.keep_failed:
            return None
        out = {name: row.get(name) for name in self.columns()}
        out.update(values)
        out["error"] = values.get("error", error)
        return out


def _with_messages(batch: pa.Table, task: LLMTask) -> pa.Table:
    messages = pa.array([task.messages(r) for r in batch.to_pylist()], MESSAGES)
    if "messages" in batch.column_names:  # the conversation a follow-up task continues
        batch = batch.drop_columns(["messages"])
    return batch.append_column("messages", messages)


def _parsed(batch: pa.Table, task: LLMTask) -> pa.Table:
    columns = task.columns()
    raw = set(RAW) - set(REPLY) if task.keep_reply else set(RAW)
    gone = set(task.drop) | raw | (set() if task.lineage else set(LINEAGE))
    keep = [f for f in batch.schema if f.name not in columns and f.name not in gone]
    out = []
    for row in batch.to_pylist():
        values = task.finish(row)
        if values is not None:
            out.append({**{f.name: row[f.name] for f in keep}, **values})
    return pa.Table.from_pylist(out, schema=pa.schema(keep + [pa.field(n, t) for n, t in columns.items()]))
