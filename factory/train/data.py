"""Training data: chat-template tokenization, assistant-only labels, packing.

A sample is one conversation tokenized with the student's chat template; its
labels are -100 everywhere except the assistant turns (content and the
end-of-turn tokens the template adds, so the student learns to stop).

A *micro-batch row* holds several samples back to back (`input_ids`, `labels`
flat, `lengths` per sample). `collate` turns a row into tensors: packed as one
sequence whose `position_ids` restart at 0 for every sample (transformers then
masks attention across samples), or padded to the longest sample with an
attention mask (the plain baseline). Nothing here imports Ray except
`build_datasets`, so the GPU benchmark can use the rest without Ray installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

IGNORE = -100


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]


def assistant_spans(tokenizer: Any, messages: list[dict]) -> tuple[str, list[tuple[int, int]]] | None:
    """The rendered conversation and the character spans of its assistant turns.

    Each assistant turn is the text the template adds between "prompt for turn
    i" (with the generation prompt) and "conversation up to turn i". Returns
    None when the template does not render turns as prefixes of each other.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (upto.startswith(prompt) and text.startswith(upto)):
            return None
        spans.append((len(prompt), len(upto)))
    return text, spans


def tokenize_conversation(tokenizer: Any, messages: list[dict], max_len: int) -> Sample | None:
    """Token ids and assistant-only labels, truncated to `max_len`; None if nothing is left to learn."""
    rendered = assistant_spans(tokenizer, messages)
    if rendered is None:
        return None
    text, spans = rendered
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"][:max_len]
    labels = []
    for tok, (start, end) in zip(ids, enc["offset_mapping"]):
        labels.append(tok if any(s <= start < e for s, e in spans) else IGNORE)
    if all(x == IGNORE for x in labels[1:]):
        return None
    # The first token is never predicted; keeping it ignored makes packed and unpacked losses equal.
    labels[0] = IGNORE
    return Sample(ids, labels)


class Tokenize:
    """Ray Data callable: `messages` → `input_ids`, `labels`, `n_tokens`, `n_labels` (other columns kept)."""

    def __init__(self, model: str, max_len: int):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.max_len = max_len

    def __call__(self, batch: "Any") -> dict[str, list]:
        keep = [c for c in batch.column_names if c != "messages"]
        out: dict[str, list] = {c: [] for c in [*keep, "input_ids", "labels", "n_tokens", "n_labels"]}
        for i, messages in enumerate(batch.column("messages").to_pylist()):
            s = tokenize_conversation(self.tokenizer, messages, self.max_len)
            if s is None:
                continue
            for c in keep:
                out[c].append(batch.column(c)[i].as_py())
            out["input_ids"].append(s.input_ids)
            out["labels"].append(s.labels)
            out["n_tokens"].append(len(s.input_ids))
            out["n_labels"].append(sum(x != IGNORE for x in s.labels))
        return out


def group_samples(lengths: Sequence[int], batch_tokens: int, packing: bool) -> list[list[int]]:
    """Indices of samples per micro-batch, each within `batch_tokens`.

    Packing: first-fit decreasing, so rows fill up (little padding at the
    end of the batch, none inside). Padded: consecutive samples while
    count × longest ≤ batch_tokens, as a plain padded collator would batch them.
    """
    if packing:
        bins: list[list[int]] = []
        room: list[int] = []
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            for b, free in enumerate(room):
                if lengths[i] <= free:
                    bins[b].append(i)
                    room[b] -= lengths[i]
                    break
            else:
                bins.append([i])
                room.append(batch_tokens - lengths[i])
        return bins
    groups: list[list[int]] = []
    longest = 0
    for i, n in enumerate(lengths):
        if groups and (len(groups[-1]) + 1) * max(longest, n) <= batch_tokens:
            groups[-1].append(i)
            longest = max(longest, n)
        else:
            groups.append([i])
            longest = n
    return groups


def make_rows(samples: Sequence[Sample], batch_tokens: int, packing: bool) -> list[dict[str, list[int]]]:
    """Micro-batch rows (`input_ids`, `labels` flat; `lengths` per sample)."""
    rows = []
    for group in group_samples([len(s.input_ids) for s in samples], batch_tokens, packing):
        rows.append({
            "input_ids": [t for i in group for t in samples[i].input_ids],
            "labels": [t for i in group for t in samples[i].labels],
            "lengths": [len(samples[i].input_ids) for i in group],
        })
    return rows


def pack_batch(batch: dict[str, Any], batch_tokens: int, packing: bool) -> dict[str, list]:
    """Ray Data function: tokenized samples (numpy batch) → micro-batch rows."""
    samples = [Sample(list(map(int, i)), list(map(int, l))) for i, l in zip(batch["input_ids"], batch["labels"])]
    rows = make_rows(samples, batch_tokens, packing)
    return {k: [r[k] for r in rows] for k in ("input_ids", "labels", "lengths")}


def collate(row: dict[str, Sequence[int]], packing: bool, pad_id: int = 0) -> dict[str, Any]:
    """Tensors for one micro-batch row: packed [1, T] with position_ids, or padded [B, L] with a mask."""
    import torch

    ids = torch.as_tensor(list(row["input_ids"]), dtype=torch.long)
    labels = torch.as_tensor(list(row["labels"]), dtype=torch.long)
    lengths = [int(n) for n in row["lengths"]]
    if packing:
        position_ids = torch.cat([torch.arange(n) for n in lengths])
        return {"input_ids": ids[None], "labels": labels[None], "position_ids": position_ids[None]}
    longest = max(lengths)
    shape = (len(lengths), longest)
    out = {
        "input_ids": torch.full(shape, pad_id, dtype=torch.long),
        "labels": torch.full(shape, IGNORE, dtype=torch.long),
        "attention_mask": torch.zeros(shape, dtype=torch.long),
    }
    start = 0
    for b, n in enumerate(lengths):
        out["input_ids"][b, :n] = ids[start:start + n]
        out["labels"][b, :n] = labels[start:start + n]
        out["attention_mask"][b, :n] = 1
        start += n
    return out
