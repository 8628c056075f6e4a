"""Judge-free metrics: token F1 and ROUGE-L against the reference, refusals, length, bootstrap CIs.

They need no LLM, so a run without a judge still says something true. Text is
normalized the SQuAD way (lower case, no punctuation or articles) before
tokens are compared.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np

from factory.text import content_words, sentences, without_think

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
# Phrases an answer uses to decline; matched in the first sentence only, so an
# answer that merely mentions a gap somewhere later still counts as an answer.
_REFUSAL = re.compile(
    r"\b(i (do not|don't|cannot|can't|am unable to|have no) (know|find|answer|say|tell|determine|information|record)"
    r"|(is|are) not (mentioned|described|recorded|discussed|covered|stated|available)"
    r"|(does|do) not (contain|mention|include|say|describe|provide)"
    r"|(no|not enough|insufficient) (information|evidence|record|mention|details?)"
    r"|cannot be (answered|determined)|unanswerable|not possible to (answer|determine|say))\b",
    re.IGNORECASE,
)


def final_answer(text: str | None) -> str:
    """The answer a user reads: `<think>` reasoning removed, whitespace trimmed."""
    return without_think(text)


def tokens(text: str | None) -> list[str]:
    text = (text or "").lower().translate(_PUNCT)
    return _ARTICLES.sub(" ", text).split()


def token_f1(prediction: str | None, reference: str | None) -> float:
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str | None, reference: str | None) -> float:
    """ROUGE-L F-measure (longest common subsequence of normalized tokens)."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def is_refusal(text: str | None) -> bool:
    head = next(iter(sentences(final_answer(text))), "")
    return bool(_REFUSAL.search(head))


def n_words(text: str | None) -> int:
    """Answer length in whitespace words: comparable across systems and answer files."""
    return len(final_answer(text).split())


def bootstrap_ci(values, n_boot: int, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling items with replacement."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def score(row: dict) -> dict:
    """An eval_answers row with its judge-free metrics filled in (left null when the system failed)."""
    if row.get("error") is not None or row.get("answer") is None:
        return {**row, "token_f1": None, "rouge_l": None, "refused": None, "n_tokens": None}
    answer = final_answer(row["answer"])
    return {**row, "token_f1": token_f1(answer, row["reference"]), "rouge_l": rouge_l(answer, row["reference"]),
            "refused": is_refusal(answer), "n_tokens": n_words(answer)}


def reference_recall(prediction: str | None, reference: str | None) -> float:
    """Share of the reference's content words the answer contains: how much of the reference it covers."""
    ref = set(content_words(reference or ""))
    return len(ref & set(content_words(prediction or ""))) / len(ref) if ref else float(not content_words(prediction or ""))


def groups_of(kind: str | None, question_set: str | None = None) -> tuple[str, ...]:
    """The result groups a question counts in: all, its kind and, when the test split has several
    question sets (e.g. main and hard_global), `set:<name>`."""
    out = ("all", kind or "unknown")
    return out + (f"set:{question_set}",) if question_set else out


def summary(answers: list[dict], n_boot: int, seed: int = 0, sets: dict[str, str] | None = None) -> list[dict]:
    """eval_results rows per system and group (all, kind, question set): mean token F1, ROUGE-L,
    reference recall and length with bootstrap intervals; refusal accuracy (unanswerable questions
    refused, the others answered) and, over all kinds, the false refusal rate. Failed answers are
    left out here; the report counts them."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in answers:
        if r["error"] is None and r["answer"] is not None:
            for group in groups_of(r["kind"], (sets or {}).get(r["question_id"])):
                groups.setdefault((r["system"], group), []).append(r)
    out = []
    for (system, group), rs in sorted(groups.items()):
        measures = [("token_f1", [r["token_f1"] for r in rs]), ("rouge_l", [r["rouge_l"] for r in rs]),
                    ("reference_recall", [reference_recall(final_answer(r["answer"]), r["reference"]) for r in rs]),
                    ("answer_tokens", [r["n_tokens"] for r in rs]),
                    ("refusal_accuracy", [float(r["refused"] == (r["kind"] == "unanswerable")) for r in rs])]
        answerable = [float(r["refused"]) for r in rs if r["kind"] != "unanswerable"]
        if answerable and (group == "all" or group.startswith("set:")):
            measures.append(("false_refusal_rate", answerable))
        for metric, values in measures:
            low, high = bootstrap_ci(values, n_boot, seed)
            out.append({"metric": metric, "system_a": system, "system_b": None, "criterion": None, "kind": group,
                        "n": len(values), "value": float(np.mean(values)), "ci_low": low, "ci_high": high})
    return out
