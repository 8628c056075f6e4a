"""ragtune: turn a private corpus into LLM-native memory (RAG-Tuned-LLM) on Ray."""

__version__ = "0.1.0"
