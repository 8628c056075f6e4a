"""OpenAI-compatible chat completions over HTTP (vllm serve, SGLang, TGI, llama.cpp, hosted APIs).

One Ray Data actor (more past MAX_THREADS) holds a `requests` session and a
thread pool of `concurrency` workers shared by every batch it is given;
several batches run at once in the actor, so one slow call never idles the
rest. Each call goes to the run's call cache when it finishes (CallJournal),
not when its batch does. The qps limit is split evenly between actors. Retries: 408/409/425/429,
every 5xx, timeouts, dropped connections and unparseable 200 bodies, with
exponential backoff and full jitter (Retry-After wins when the server sends
one). Other 4xx fail the row at once. The API key goes only into the
Authorization header; it is never logged or put into an error.

engine_kwargs: `response_format` ("json_schema" default, "json_object" or
"none") picks how a JSON schema is requested; every other key is added to the
request body as is (e.g. `top_k`, `chat_template_kwargs`) and is part of the
cache key.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import pyarrow as pa
from pydantic import BaseModel

from factory.config import EngineConfig
from factory.engines.protocol import RESULT_SCHEMA, result_table
from factory.engines.cache import CallJournal
from factory.engines.calls import CallResult
from factory.engines.structured import LLM_ERROR, json_schema
from factory.errors import UserError

MAX_THREADS = 256
RETRY_STATUS = {408, 409, 425, 429}
MAX_BACKOFF_S = 60.0
_OWN_KWARGS = {"response_format"}


def request_extras(cfg: EngineConfig) -> dict:
    return {k: v for k, v in cfg.engine_kwargs.items() if k not in _OWN_KWARGS}


def api_key(cfg: EngineConfig) -> str | None:
    if cfg.api_key is not None:
        return cfg.api_key.get_secret_value() or None
    return os.environ.get("OPENAI_API_KEY") or None


def preflight(cfg: EngineConfig) -> None:
    """Fail fast on an unreachable server or a rejected key, before any row is sent."""
    import requests

    url = cfg.base_url.rstrip("/") + "/models"
    try:
        resp = requests.get(url, headers=_headers(api_key(cfg)), timeout=min(cfg.timeout_s, 30))
    except requests.RequestException as exc:
        raise UserError(f"openai engine: cannot reach {cfg.base_url} ({type(exc).__name__})") from None
    if resp.status_code in (401, 403):
        raise UserError(f"openai engine: {cfg.base_url} rejected the API key (HTTP {resp.status_code}); check api_key")


def generate(ds, cfg: EngineConfig, output_model: type[BaseModel] | None, journal: Callable[[], CallJournal]):
    import ray.data

    actors = max(1, math.ceil(cfg.concurrency / MAX_THREADS))
    threads = math.ceil(cfg.concurrency / actors)
    # Enough batches in flight per actor that the thread pool always has queued calls.
    calls = math.ceil(threads / cfg.batch_size) + 1
    return ds.map_batches(
        _Worker,
        fn_constructor_kwargs={
            "cfg": cfg,
            "output_model": output_model,
            "journal": journal,
            "threads": threads,
            "qps": cfg.qps / actors if cfg.qps else None,
        },
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        # Waiting on sockets needs no reserved CPU; reserving any can starve the map tasks of a one-CPU Ray.
        num_cpus=0,
        compute=ray.data.ActorPoolStrategy(
            size=actors, max_concurrent_calls_per_actor=calls, enable_true_multi_threading=True
        ),
    )


def _headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


class RateLimiter:
    """Spaces request starts at least 1/qps apart across threads."""

    def __init__(self, qps: float | None):
        self.interval = 1.0 / qps if qps else 0.0
        self.next = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        if start > now:
            time.sleep(start - now)


class OpenAIClient:
    def __init__(self, cfg: EngineConfig, output_model: type[BaseModel] | None = None,
                 qps: float | None = None, pool: int = 16):
        import requests
        from requests.adapters import HTTPAdapter

        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.session = requests.Session()
        self.session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=pool))
        self.session.mount("https://", HTTPAdapter(pool_connections=1, pool_maxsize=pool))
        self.session.headers.update(_headers(api_key(cfg)))
        self.limiter = RateLimiter(qps if qps is not None else cfg.qps)
        self.body = {"model": cfg.model, "top_p": cfg.top_p, "seed": cfg.seed, **request_extras(cfg)}
        mode = cfg.engine_kwargs.get("response_format", "json_schema")
        schema = json_schema(output_model)
        if schema is not None and mode == "json_schema":
            self.body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": output_model.__name__, "schema": schema},
            }
        elif schema is not None and mode == "json_object":
            self.body["response_format"] = {"type": "json_object"}

    def complete(self, messages: list[dict], max_tokens: int, temperature: float) -> CallResult:
        import requests

        body = {**self.body, "messages": messages, "max_tokens": int(max_tokens), "temperature": float(temperature)}
        reason, retry_after = "not attempted", None
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                time.sleep(self._backoff(attempt, retry_after))
            retry_after = None
            self.limiter.wait()
            try:
                resp = self.session.post(self.url, json=body, timeout=self.cfg.timeout_s)
            except requests.Timeout:
                reason = f"timed out after {self.cfg.timeout_s:g} s"
                continue
            except requests.ConnectionError as exc:
                reason = f"connection failed ({_root(exc)})"
                continue
            if resp.status_code == 200:
                result = _parse(resp)
                if result is not None:
                    return result
                reason = "malformed response body"
                continue
            reason = f"HTTP {resp.status_code}: {_message(resp)}"
            if resp.status_code in RETRY_STATUS or resp.status_code >= 500:
                retry_after = resp.headers.get("Retry-After")
                continue
            return CallResult(error=f"{LLM_ERROR}: {reason}")
        return CallResult(error=f"{LLM_ERROR}: {reason} (gave up after {self.cfg.max_retries + 1} attempts)")

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), MAX_BACKOFF_S)
            except ValueError:
                pass
        return random.uniform(0, min(self.cfg.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))


def _parse(resp) -> CallResult | None:
    """A CallResult from a 200 reply, or None when the body is not a chat completion."""
    try:
        data = resp.json()
        choice = data["choices"][0]
        text = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if text is None:
        return CallResult(error=f"{LLM_ERROR}: reply has no content (finish_reason={choice.get('finish_reason')})")
    usage = data.get("usage") or {}
    return CallResult(
        text=text,
        input_tokens=usage.get("prompt_tokens") or 0,
        output_tokens=usage.get("completion_tokens") or 0,
        finish_reason=choice.get("finish_reason"),
    )


def _message(resp) -> str:
    try:
        msg = resp.json().get("error", {})
        msg = msg.get("message", "") if isinstance(msg, dict) else str(msg)
    except (ValueError, AttributeError):
        msg = resp.text
    return " ".join(str(msg).split())[:200]


def _root(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return type(exc).__name__


class _Worker:
    def __init__(self, cfg: EngineConfig, output_model: type[BaseModel] | None, journal: Callable[[], CallJournal],
                 threads: int, qps: float | None):
        self.client = OpenAIClient(cfg, output_model, qps=qps, pool=threads)
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.output_model = output_model
        self.journal = journal()

    def __call__(self, batch: pa.Table) -> pa.Table:
        futures = [self.pool.submit(self._one, r) for r in batch.to_pylist()]
        rows = [f.result() for f in futures]
        self.journal.flush()
        return pa.concat_tables(rows) if rows else RESULT_SCHEMA.empty_table()

    def _one(self, row: dict) -> pa.Table:
        """One call's result row, handed to the journal the moment it exists."""
        try:
            result = self.client.complete(row["messages"], row["max_tokens"], row["temperature"])
        except Exception as exc:  # a row must end with an error, never kill the batch
            result = CallResult(error=f"{LLM_ERROR}: {type(exc).__name__}: {exc}")
        out = result_table([row["key"]], [result], self.output_model)
        self.journal.add(out)
        return out
