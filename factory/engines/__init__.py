"""The LLM engine layer: `run_llm` sends a Ray Dataset of chat prompts through one engine.

Backends (openai | hf | vllm) are imported only when a role uses them, so the
package works without vLLM or a GPU. See docs/engines.md.
"""

from factory.engines.base import run_llm
from factory.engines.structured import parse_output

__all__ = ["run_llm", "parse_output"]
