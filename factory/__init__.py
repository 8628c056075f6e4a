"""ragtune: turn a private corpus into LLM-native memory (RAG-Tuned-LLM) on Ray."""

__version__ = "0.1.0"

import logging as _logging

from factory.progress import log_to_console as _log_to_console

# Every module logs to `logging.getLogger(__name__)`; the user sees those lines as `ragtune: ...` on
# stderr, on the driver and in Ray workers alike (both import this package).
_log_to_console(_logging.getLogger(__name__))
