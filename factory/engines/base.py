"""`run_llm`: one Ray Dataset of chat prompts through one engine, cached and resumable.

Flow of one call:
1. key every row: hash(engine, model, messages, sampling, output schema);
2. anti-join on the run's call cache (`_cache/llm/<task>/`): only missing keys are sent,
   each once (rows with identical prompts share one call);
3. the backend (openai | hf | vllm) turns request rows into result rows; its workers append
   each finished call to the cache when it finishes (CallJournal), so a crash repeats only
   the calls in flight;
4. the driver streams result blocks as they finish, counts tokens, compacts the cache's
   parts now and then, and stops cleanly at the stage's token budget;
5. results are attached back to the original rows by key (never by order).

Every row comes back: with text, or with `error` = "<kind>: <reason>" where
kind is llm_error (transport, retries exhausted), invalid_output (text that
did not parse or validate; the text is kept) or budget_exhausted.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from factory.config import EngineConfig, S3Config
from factory.engines import hf, openai, vllm
from factory.engines.cache import CallCache, CallJournal, call_key
from factory.engines.protocol import RESULT_SCHEMA, Backend
from factory.engines.structured import BUDGET, LLM_ERROR, schema_hash
from factory.errors import UserError, find_user_error

logger = logging.getLogger(__name__)

KEY = "_llm_key"
ROW = "_llm_row"  # a row's identity, to pick the one row that sends a key shared by several
MAX_TOKENS = "_llm_max_tokens"
TEMPERATURE = "_llm_temperature"
INTERNAL = (KEY, ROW, MAX_TOKENS, TEMPERATURE)
# Past this many batches, blocks hold several: Ray Data's per-block overhead would dominate.
MAX_BLOCKS = 4096
# Seconds between the driver's merges of the parts workers wrote (a long run writes thousands).
COMPACT_EVERY_S = 30.0

# What run_llm adds to every row of its input.
OUTPUT_COLUMNS = ("generated_text", "parsed", "error", "input_tokens", "output_tokens", "engine", "model", "prompt_hash")

# Every engine a role can name (EngineConfig.engine, besides "none"). A new backend is a module with the
# Backend functions (protocol.py), imported and added here.
BACKENDS: dict[str, Backend] = {"openai": openai, "hf": hf, "vllm": vllm}


def model_name(cfg: EngineConfig) -> str:
    return f"{cfg.model}+{cfg.adapter}" if cfg.adapter else str(cfg.model)


def adapter_fingerprint(adapter: str | None, s3: S3Config | None = None) -> str | None:
    """Files, sizes and versions (mtime; ETag on S3) of an adapter folder, local or remote: a student
    retrained into the same folder must not be answered from the cache of the old one.
    Only listed, never downloaded; anything that is not a folder (a Hub id) is its own identity."""
    import hashlib
    import posixpath

    from factory.storage import describe_error, filesystem

    if not adapter:
        return adapter
    fs, path = filesystem(adapter, s3)
    try:
        if not fs.isdir(path):
            return adapter
        files = fs.find(path, detail=True).values()
    except Exception as exc:  # s3fs raises botocore's zoo: one line naming the adapter instead
        raise UserError(describe_error(adapter, exc)) from None
    listing = sorted((posixpath.relpath(f["name"], path), f["size"], f.get("ETag") or f.get("mtime") or f.get("LastModified"))
                     for f in files)
    return hashlib.sha256(repr(listing).encode()).hexdigest()[:16]


def backend(engine: str) -> Backend:
    if engine == "none":
        raise ValueError("engine 'none' has no LLM: callers take their rule-based path instead of run_llm")
    return BACKENDS[engine]


def run_llm(run: Any, rec: Any, ds: Any, role_cfg: EngineConfig, task: str, output_model: type[BaseModel] | None = None,
            prompt_file: str | None = None):
    """Rows of `ds` (id, messages[, prompt_hash, max_tokens, temperature]) plus the call's outcome. `task` names
    the call-cache folder and the stats; rows without a prompt_hash get that of `prompt_file` (default: `task`)."""
    import ray


    be = backend(role_cfg.engine)
    engine, model = role_cfg.engine, model_name(role_cfg)
    params = {
        "top_p": role_cfg.top_p,
        "seed": role_cfg.seed,
        "schema": schema_hash(output_model),
        "adapter": adapter_fingerprint(role_cfg.adapter, run.cfg.s3),
        "extra": be.request_extras(role_cfg),
    }
    keyed = ds.map_batches(
        _add_keys,
        fn_kwargs={"engine": engine, "model": model, "params": params,
                   "max_tokens": role_cfg.max_tokens, "temperature": role_cfg.temperature},
        batch_format="pyarrow",
    ).materialize()
    ids = _columns(keyed, (KEY, ROW))
    keys = ids.column(KEY).combine_chunks()
    cache = CallCache(run, task)
    cached = cache.load()
    cached = cached.filter(pc.is_in(cached.column("key"), value_set=keys)) if len(keys) else cached.slice(0, 0)
    unique = pc.unique(keys)
    todo = unique.filter(pc.invert(pc.is_in(unique, value_set=cached.column("key"))))
    parts = [cached.select(RESULT_SCHEMA.names).cast(RESULT_SCHEMA)]

    tag = f"{engine}:{model}"
    stopped = False
    if len(todo):
        if _over_budget(rec, tag, role_cfg.budget_tokens):
            stopped = True
        else:
            be.preflight(role_cfg)
            senders = _senders(ids, todo)
            pending = keyed.map_batches(_requests, fn_kwargs={"senders": [ray.put(senders)]}, batch_format="pyarrow")
            # One block per batch: a map task returns its whole block at once, so a stage whose rows sit in
            # one block would cache nothing until every call is done (a crash loses them all) and would
            # keep only one batch in flight.
            pending = pending.repartition(min(-(-len(todo) // role_cfg.batch_size), MAX_BLOCKS))
            journal = functools.partial(CallJournal, cache, engine, model)
            stopped = _stream(be.generate(pending, role_cfg, output_model, journal), cache, rec, tag, role_cfg, parts)
    if stopped:
        logger.info(f"[{rec.name}] {task}: token budget of {role_cfg.budget_tokens} reached for {tag}; "
                   f"kept every finished call, the rest are marked {BUDGET} (raise budget_tokens and rerun to continue)")
        rec.stats["budget_exhausted"] = True
    cache.compact()

    results = pa.concat_tables(parts)
    kind = BUDGET if stopped else LLM_ERROR
    missing = f"{kind}: token budget of {role_cfg.budget_tokens} reached" if stopped else f"{kind}: no result"
    _count(rec, task, keys, results, len(cached), kind)
    return keyed.map_batches(
        _attach,
        fn_kwargs={"results": [ray.put(results)], "engine": engine, "model": model,
                   "prompt_hash": _prompt_hash(prompt_file or task), "missing": missing},
        batch_format="pyarrow",
    )


def _stream(out: Any, cache: CallCache, rec: Any, tag: str, cfg: EngineConfig, parts: list[pa.Table]) -> bool:
    """Drain the backend block by block (its workers already cached the calls); True when the
    token budget stopped it."""
    compacted = time.monotonic()
    try:
        for block in out.iter_batches(batch_size=None, batch_format="pyarrow"):
            block = block.select(RESULT_SCHEMA.names).cast(RESULT_SCHEMA)
            parts.append(block)
            n = len(block)
            if time.monotonic() - compacted > COMPACT_EVERY_S:
                cache.compact(journal_only=True)
                compacted = time.monotonic()
            rec.add_tokens(tag, pc.sum(block.column("input_tokens")).as_py() or 0,
                           pc.sum(block.column("output_tokens")).as_py() or 0, n)
            if _over_budget(rec, tag, cfg.budget_tokens):
                return True
    except Exception as exc:
        user = find_user_error(exc)
        if user is not None:
            raise UserError(str(user)) from None
        raise
    return False


def _over_budget(rec: Any, tag: str, budget: int | None) -> bool:
    if budget is None:
        return False
    t = rec.tokens.get(tag, {})
    return t.get("input", 0) + t.get("output", 0) >= budget


def _count(rec: Any, task: str, keys: pa.Array, results: pa.Table, cache_hits: int, missing_kind: str) -> None:
    """Per input row: drops by error kind; per task: rows, cache hits, errors."""
    idx = pc.index_in(keys, value_set=results.column("key"))
    errors = pc.take(results.column("error"), pc.fill_null(idx, 0)).to_pylist() if len(results) else [None] * len(keys)
    kinds: dict[str, int] = {}
    for err, found in zip(errors, pc.is_valid(idx).to_pylist()):
        if found and err is None:
            continue
        kind = err.split(":", 1)[0] if found else missing_kind
        kinds[kind] = kinds.get(kind, 0) + 1
    for kind, n in kinds.items():
        rec.drop(kind, n)
    stats = rec.stats.setdefault("llm", {}).setdefault(task, {"rows": 0, "cache_hits": 0, "errors": 0})
    stats["rows"] += len(keys)
    stats["cache_hits"] += cache_hits
    stats["errors"] += sum(kinds.values())


def _prompt_hash(task: str) -> str | None:
    from factory import prompts

    try:
        return prompts.load(task).hash
    except FileNotFoundError:
        return None


def _columns(ds: Any, names: tuple[str, ...]) -> pa.Table:
    import ray

    # Ray Data passes an empty block through a map without calling it: it lacks the columns the map adds.
    tables = [t.select(list(names)) for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    if not tables:
        return pa.table({n: pa.array([], pa.string()) for n in names})
    return pa.concat_tables(tables).combine_chunks()


def _senders(ids: pa.Table, todo: pa.Array) -> pa.Array:
    """The first row of each key to send: one call per distinct key, `_attach` gives its result to every row."""
    wanted = ids.filter(pc.is_in(ids.column(KEY), value_set=todo))
    return pc.take(wanted.column(ROW), pc.index_in(todo, value_set=wanted.column(KEY)))


# ---- per-block functions (run in Ray workers) --------------------------------------------
def _add_keys(batch: pa.Table, engine: str, model: str, params: dict, max_tokens: int, temperature: float) -> pa.Table:
    import uuid

    n = batch.num_rows
    tag = uuid.uuid4().hex
    msgs = batch.column("messages").to_pylist()
    mt = _override(batch, "max_tokens", n, max_tokens, int)
    temp = _override(batch, "temperature", n, temperature, float)
    keys = [
        call_key(engine, model, m or [], {**params, "max_tokens": a, "temperature": b})
        for m, a, b in zip(msgs, mt, temp)
    ]
    for name in INTERNAL:
        if name in batch.column_names:
            batch = batch.drop_columns([name])
    return (batch.append_column(KEY, pa.array(keys, pa.string()))
            .append_column(ROW, pa.array([f"{tag}:{i}" for i in range(n)], pa.string()))
            .append_column(MAX_TOKENS, pa.array(mt, pa.int64()))
            .append_column(TEMPERATURE, pa.array(temp, pa.float64())))


def _override(batch: pa.Table, name: str, n: int, default: Any, cast: type) -> list:
    if name not in batch.column_names:
        return [default] * n
    return [default if v is None else cast(v) for v in batch.column(name).to_pylist()]


def _requests(batch: pa.Table, senders: list) -> pa.Table:
    import ray

    keep = batch.filter(pc.is_in(batch.column(ROW), value_set=ray.get(senders[0])))
    return pa.table({
        "key": keep.column(KEY),
        "messages": keep.column("messages"),
        "max_tokens": keep.column(MAX_TOKENS),
        "temperature": keep.column(TEMPERATURE),
    })


def _attach(batch: pa.Table, results: list, engine: str, model: str, prompt_hash: str | None, missing: str) -> pa.Table:
    import ray

    table = ray.get(results[0])
    idx = pc.index_in(batch.column(KEY), value_set=table.column("key"))
    found = pc.is_valid(idx)
    safe = pc.fill_null(idx, 0)
    n = batch.num_rows

    def pick(col: str) -> pa.Array:
        if len(table) == 0:
            return pa.nulls(n, RESULT_SCHEMA.field(col).type)
        return pc.if_else(found, pc.take(table.column(col), safe), pa.scalar(None, RESULT_SCHEMA.field(col).type))

    error = pc.if_else(found, pick("error"), pa.scalar(missing)) if len(table) else pa.array([missing] * n, pa.string())
    if "prompt_hash" in batch.column_names:
        ph = pc.fill_null(batch.column("prompt_hash"), pa.scalar(prompt_hash, pa.string()))
    else:
        ph = pa.array([prompt_hash] * n, pa.string())
    out = batch.drop_columns([c for c in (*INTERNAL, *OUTPUT_COLUMNS) if c in batch.column_names])
    values = {
        "generated_text": pick("generated_text"),
        "parsed": pick("parsed"),
        "error": error,
        "input_tokens": pc.fill_null(pick("input_tokens"), 0),
        "output_tokens": pc.fill_null(pick("output_tokens"), 0),
        "engine": pa.array([engine] * n, pa.string()),
        "model": pa.array([model] * n, pa.string()),
        "prompt_hash": ph,
    }
    for name in OUTPUT_COLUMNS:
        out = out.append_column(name, values[name])
    return out
