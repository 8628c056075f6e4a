"""Rows and engine settings for tests of the LLM call layer (run_llm) against the loopback server."""

from __future__ import annotations

import random

from factory.config import EngineConfig, validate_config
from factory.pipeline import Run
from tests.support.openai_server import FakeOpenAIServer


def empty_run(tmp_path) -> Run:
    """A run folder with the default config and nothing in it."""
    return Run(validate_config({"output": {"path": str(tmp_path / "run")}}))


def engine(server: FakeOpenAIServer, **kw) -> EngineConfig:
    base = {"engine": "openai", "model": "m", "base_url": server.base_url, "timeout_s": 2.0,
            "max_retries": 4, "backoff_s": 0.01, "concurrency": 4, "batch_size": 4}
    return EngineConfig(**{**base, **kw})


def prompts(ray, n: int, start: int = 0, **extra):
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"row {i}"}], "keep": i, **extra}
            for i in range(start, start + n)]
    random.Random(n).shuffle(rows)
    return ray.data.from_items(rows)


def by_id(ds) -> dict[str, dict]:
    return {r["id"]: r for r in ds.take_all()}


def row_of(request: dict) -> int:
    return int(request["messages"][-1]["content"].split()[-1])
