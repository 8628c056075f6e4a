"""The LLM engine layer: `run_llm` sends a Ray Dataset of chat prompts through one engine.

Backends (openai | hf | vllm) are imported only when a role uses them, so the
package works without vLLM or a GPU, and `factory.engines.hf` imports without
Ray or pydantic (the GPU benchmark uses it alone). See docs/engines.md.
"""

__all__ = ["parse_output", "run_llm"]


def __getattr__(name: str):
    if name == "run_llm":
        from factory.engines.base import run_llm

        return run_llm
    if name == "parse_output":
        from factory.engines.structured import parse_output

        return parse_output
    raise AttributeError(f"module 'factory.engines' has no attribute '{name}'")
