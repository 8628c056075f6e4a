"""vLLM backend on `ray.data.llm`: chat template → tokenize → vLLM engine → detokenize.

Built with `build_processor(vLLMEngineProcessorConfig(...))` as the Ray docs
describe. `ray.data.llm` is imported only here and only when a role uses
vllm; vLLM itself is imported by Ray inside the engine actors. Rows that fail
in the engine (e.g. a prompt longer than `max_model_len`) come back with
`__inference_error__` (should_continue_on_error) and become `llm_error` rows;
they never fail the job. JSON schemas go to vLLM structured outputs
(`sampling_params.structured_outputs.json`).

engine_kwargs go to the vLLM engine (tensor_parallel_size, max_model_len,
enable_prefix_caching, ...), except `processor`: a dict of extra
vLLMEngineProcessorConfig fields (max_concurrent_batches, runtime_env,
placement_group_config, chat_template_stage, ...). `concurrency` is the
number of vLLM replicas, `batch_size` the rows per engine call. The engine
stage hands back `batch_size` rows at once; a task right after it appends
them to the run's call cache, before the block travels to the driver.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from pydantic import BaseModel

from factory.config import EngineConfig
from factory.engines.protocol import RESULT_SCHEMA
from factory.engines.cache import CallJournal
from factory.engines.structured import LLM_ERROR, finish, json_schema
from factory.errors import UserError

ERROR_COLUMN = "__inference_error__"


def request_extras(cfg: EngineConfig) -> dict:
    return {}


def preflight(cfg: EngineConfig) -> None:
    # With a runtime_env the engine actors bring their own vLLM; the driver needs none.
    if "runtime_env" in cfg.engine_kwargs.get("processor", {}):
        return
    if importlib.util.find_spec("vllm") is None:
        raise UserError("engine 'vllm' needs vLLM on the GPU nodes: pip install 'ragtune[vllm]' "
                        "(or set engine_kwargs.processor.runtime_env), or use engine 'openai' against `vllm serve`")


def processor_config(cfg: EngineConfig):
    from ray.data.llm import vLLMEngineProcessorConfig

    engine_kwargs = {k: v for k, v in cfg.engine_kwargs.items() if k != "processor"}
    extra: dict[str, Any] = dict(cfg.engine_kwargs.get("processor", {}))
    if cfg.adapter:
        # A row whose `model` differs from the engine's is a LoRA request, loaded from this folder.
        engine_kwargs.setdefault("enable_lora", True)
        extra.setdefault("dynamic_lora_loading_path", str(Path(cfg.adapter).parent))
    return vLLMEngineProcessorConfig(
        model_source=cfg.model,
        engine_kwargs=engine_kwargs,
        concurrency=cfg.concurrency,
        batch_size=cfg.batch_size,
        accelerator_type=cfg.accelerator_type,
        should_continue_on_error=True,
        chat_template_stage=extra.pop("chat_template_stage", True),
        tokenize_stage=True,
        detokenize_stage=True,
        **extra,
    )


def build(cfg: EngineConfig, output_model: type[BaseModel] | None):
    from ray.data.llm import build_processor

    schema = json_schema(output_model)
    return build_processor(
        processor_config(cfg),
        preprocess=functools.partial(
            preprocess_row, top_p=cfg.top_p, seed=cfg.seed,
            schema=json.dumps(schema) if schema is not None else None,
            lora=Path(cfg.adapter).name if cfg.adapter else None,
        ),
        postprocess=functools.partial(postprocess_row, output_model=output_model),
    )


def generate(ds, cfg: EngineConfig, output_model: type[BaseModel] | None, journal: Callable[..., CallJournal]):
    out = build(cfg, output_model)(ds).map(normalize_row)
    return out.map_batches(cache_block, fn_kwargs={"journal": journal}, batch_format="pyarrow", batch_size=None)


def cache_block(batch: pa.Table, journal: Callable[..., CallJournal]) -> pa.Table:
    """Append a finished block's calls to the cache where the block is, not on the driver."""
    j = journal(background=False)
    j.add(batch)
    j.flush()
    return batch


def preprocess_row(row: dict, *, top_p: float, seed: int, schema: str | None, lora: str | None) -> dict:
    """A request row (key, messages, max_tokens, temperature) → what the vLLM stages read."""
    params: dict[str, Any] = {
        "max_tokens": int(row["max_tokens"]),
        "temperature": float(row["temperature"]),
        "top_p": top_p,
        "seed": seed,
        "detokenize": False,  # the detokenize stage does it, off the GPU actor
    }
    if schema is not None:
        # A JSON string, not a dict: an arbitrary schema does not fit one Arrow struct type.
        params["structured_outputs"] = {"json": schema}
    out = {"messages": row["messages"], "sampling_params": params}
    if lora:
        out["model"] = lora
    return out


def postprocess_row(row: dict, *, output_model: type[BaseModel] | None) -> dict:
    """A finished vLLM row → one result row (RESULT_SCHEMA)."""
    text = row.get("generated_text")
    parsed, error = finish(text, output_model)
    n_out = int(row.get("num_generated_tokens") or 0)
    return {
        "key": row["key"],
        "generated_text": text,
        "parsed": parsed,
        "error": error,
        "input_tokens": int(row.get("num_input_tokens") or 0),
        "output_tokens": n_out,
        "finish_reason": "length" if n_out >= int(row["max_tokens"]) else "stop",
    }


def normalize_row(row: dict) -> dict:
    """Ray lets failed rows bypass postprocess with every column they had; give them our shape."""
    if row.get(ERROR_COLUMN):
        msg = " ".join(str(row[ERROR_COLUMN]).split())[:500]
        return {**{name: None for name in RESULT_SCHEMA.names}, "key": row["key"], "error": f"{LLM_ERROR}: {msg}",
                "input_tokens": 0, "output_tokens": 0}
    return {name: row.get(name) for name in RESULT_SCHEMA.names}
