"""Prompts that fit the answering model: measured as its engine will see them, context cut to the window.

hf and vllm prompts are counted with the model's own tokenizer and chat template (what the engine
sends; a 32,768-token student once got 32,817-token prompts from a packer that counted the corpus
alone). openai prompts are counted with the 4-characters-per-token estimate inflated by
`evaluate.estimate_margin`, since the server's tokenizer is not at hand. The context of a prompt
(the corpus, retrieved chunks, graph records) is packed block by block into a token budget and the
whole prompt is measured again; whatever still overflows is cut further until it fits.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Callable

from factory.config import EngineConfig, EvaluateConfig
from factory.text import estimate_tokens

CUT = "\n[... cut here: the context is full]\n\n"
# Tokens a chat template adds per message when we can only estimate (role markers, separators).
MESSAGE_OVERHEAD = 4
# A block cut to fewer tokens than this is left out instead.
MIN_PARTIAL = 32
MAX_REFITS = 6


@dataclass
class Packed:
    """A context packed into a budget, and how much of it was cut."""

    text: str
    budget_tokens: int
    tokens_total: int
    tokens_kept: int
    blocks_total: int
    blocks_full: int
    blocks_partial: int
    counted_with: str

    @property
    def cut_fraction(self) -> float:
        return 1 - self.tokens_kept / self.tokens_total if self.tokens_total else 0.0

    def stats(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "text"}, "cut_fraction": round(self.cut_fraction, 4)}


class Meter:
    """Counts text and whole chat prompts the way one answering engine will."""

    def __init__(self, engine: EngineConfig, ev: EvaluateConfig):
        self.engine = engine
        self.tokenizer = None
        self.margin = ev.estimate_margin
        self.how = f"estimate (4 characters per token + {100 * ev.estimate_margin:.0f}%)"
        if engine.engine in ("hf", "vllm"):
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(
                engine.model, trust_remote_code=bool(engine.engine_kwargs.get("trust_remote_code", False)))
            self.how = f"tokenizer and chat template of {engine.model}"
        window = self._window(ev)
        # Tokens the prompt may take: the window less what the answer may take.
        self.limit = window - engine.max_tokens if window else None
        self.window = window

    def within(self, tokens: int | None) -> Meter:
        """This meter for a smaller window (evaluate.long_context_tokens)."""
        if not tokens or (self.window and self.window <= tokens):
            return self
        other = copy.copy(self)
        other.window, other.limit = tokens, tokens - self.engine.max_tokens
        return other

    def _window(self, ev: EvaluateConfig) -> int | None:
        kw = self.engine.engine_kwargs
        if "max_model_len" in kw and self.engine.engine != "openai":
            return int(kw["max_model_len"])
        if self.tokenizer is None:
            return ev.context_window
        from transformers import AutoConfig

        # As the hf engine decides it: the model's positions, else the tokenizer's limit.
        conf = AutoConfig.from_pretrained(self.engine.model, trust_remote_code=bool(kw.get("trust_remote_code", False)))
        own = getattr(conf, "max_position_embeddings", None) or self.tokenizer.model_max_length
        return min(x for x in (own, ev.context_window) if x)

    def text(self, text: str) -> int:
        if self.tokenizer is None:
            return math.ceil(estimate_tokens(text) * (1 + self.margin))
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt(self, messages: list[dict]) -> int:
        if self.tokenizer is None:
            raw = sum(estimate_tokens(m["content"]) + MESSAGE_OVERHEAD for m in messages)
            return math.ceil(raw * (1 + self.margin))
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def head(self, text: str, n: int) -> str:
        """The first n tokens of text."""
        if n <= 0:
            return ""
        if self.tokenizer is None:
            return text[: int(4 * n / (1 + self.margin))]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][:n]
        return self.tokenizer.decode(ids)


class Blocks:
    """Context blocks in priority order with their token counts (counted once, packed many times)."""

    def __init__(self, blocks: list[str], meter: Meter):
        self.blocks = blocks
        self.counts = [meter.text(b) for b in blocks]
        self.meter = meter

    def pack(self, budget: int) -> Packed:
        """Whole blocks in order until the budget is spent; the next one is cut and marked; the rest left out."""
        parts, kept, full, partial = [], 0, 0, 0
        for block, n in zip(self.blocks, self.counts):
            room = budget - kept
            if n <= room:
                parts.append(block)
                kept, full = kept + n, full + 1
            elif room > MIN_PARTIAL + self.meter.text(CUT) and not partial:
                head = self.meter.head(block, room - self.meter.text(CUT))
                parts.append(head + CUT)
                kept, partial = kept + self.meter.text(head + CUT), 1
            else:
                break
        return Packed("".join(parts), budget, sum(self.counts), kept, len(self.blocks), full, partial, self.meter.how)


@dataclass
class Fitted:
    messages: list[dict] | None  # None: not even the prompt without context fits
    packed: Packed | None
    error: str | None = None


def fit(meter: Meter, render: Callable[[str], list[dict]], build: Callable[[int], Packed],
        cap: int | None = None) -> Fitted:
    """`render(context)` with the largest context `build(budget)` makes that keeps the whole prompt within
    the window (and the context within `cap` tokens). Measured, not assumed: a prompt still too long
    after packing (tokens merge differently across block boundaries) is packed again with less."""
    limit = meter.limit
    room = None
    if limit is not None:
        bare = meter.prompt(render(""))
        room = limit - bare
        if room < MIN_PARTIAL:
            return Fitted(None, None, f"prompt_too_long: the prompt without any context takes {bare} tokens; "
                                      f"the window of {meter.window} less max_tokens {meter.engine.max_tokens} "
                                      f"leaves {limit}")
    budget = min(x for x in (room, cap, 10**9) if x is not None)
    for _ in range(MAX_REFITS):
        packed = build(budget)
        messages = render(packed.text)
        over = meter.prompt(messages) - limit if limit is not None else 0
        if over <= 0:
            return Fitted(messages, packed)
        budget -= over + 8
    return Fitted(None, None, f"prompt_too_long: could not cut the context to fit {limit} tokens")


def refit(meter: Meter, messages: list[dict], render: Callable[[str], list[dict]], build: Callable[[int], Packed],
          packed: Packed) -> Fitted:
    """`messages` if they fit as they are (a context packed once for many questions), else packed again."""
    if meter.limit is None or meter.prompt(messages) <= meter.limit:
        return Fitted(messages, packed)
    return fit(meter, render, build, packed.budget_tokens)
