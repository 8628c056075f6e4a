"""The LLM engine layer: `run_llm` sends a Ray Dataset of chat prompts through one engine.

Backends (openai | hf | vllm) are registered in base.BACKENDS; each imports its heavy
libraries (requests, torch, ray.data.llm) only when a role uses it, so the package works
without vLLM or a GPU, and `factory.engines.hf` imports without Ray or pydantic (the GPU
benchmark uses it alone). See docs/engines.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from factory.config import EngineConfig

__all__ = ["LLMTask", "enabled", "parse_output", "run_llm"]


def enabled(role: EngineConfig | None) -> bool:
    """Whether a role calls an LLM: an unset role (judge, student) and `engine: none` take the rule-based path."""
    return role is not None and role.enabled


def __getattr__(name: str):
    if name == "run_llm":
        from factory.engines.base import run_llm

        return run_llm
    if name == "LLMTask":
        from factory.engines.task import LLMTask

        return LLMTask
    if name == "parse_output":
        from factory.engines.structured import parse_output

        return parse_output
    raise AttributeError(f"module 'factory.engines' has no attribute '{name}'")
