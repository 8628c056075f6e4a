"""General ability kept: a user's benchmark file scored for base and student.

The file is JSONL or Parquet, one item per row: `question`, `answer` and, for
multiple choice, `choices` (a list; the answer is a letter, an index or the
choice text). Without `choices` the item is exact-answer: numeric answers
match the last number of the reply (GSM8K style), others the normalized first line.
"""

from __future__ import annotations

import hashlib
import json
import re
import string

import pyarrow as pa
import pyarrow.parquet as pq

from factory import prompts
from factory.config import Config
from factory.errors import UserError
from factory.evaluate.metrics import bootstrap_ci, final_answer, tokens
from factory.evaluate.systems import engine_for, generate
from factory.pipeline import Run, StageRecord
from factory.storage import check_readable

LETTERS = string.ascii_uppercase
# A reply that starts with the letter ("B", "(B)", "B. ...") or says "answer is B".
_CHOICE = (re.compile(r"^\(?([A-Z])(?:[).:\s]|$)"), re.compile(r"answer(?: is)?[:\s]*\(?([A-Z])\b", re.IGNORECASE))
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
SYSTEMS = ("base", "student")


def load_items(path: str, cfg: Config) -> list[dict]:
    fs, fpath = check_readable(path, cfg.s3)
    where = f"evaluate.benchmark_file: {path}"
    try:
        if fpath.endswith(".parquet"):
            with fs.open(fpath, "rb") as f:
                rows = pq.read_table(f).to_pylist()
        else:
            with fs.open(fpath, "r") as f:
                rows = [json.loads(line) for line in f if line.strip()]
    except (ValueError, pa.ArrowException) as exc:
        raise UserError(f"{where}: not valid JSONL or Parquet ({exc})") from None
    items = []
    for i, row in enumerate(rows):
        if not row.get("question") or row.get("answer") is None:
            raise UserError(f"{where}: item {i + 1} needs 'question' and 'answer'")
        choices = [str(c) for c in row.get("choices") or []]
        gold = str(row["answer"]).strip()
        if choices:
            gold = _gold_letter(gold, choices, f"{where}: item {i + 1}")
        item_id = str(row.get("id") or hashlib.sha256(row["question"].encode()).hexdigest()[:16])
        items.append({"id": item_id, "question": row["question"], "choices": choices, "answer": gold})
    if cfg.evaluate.benchmark_max_items:
        items = items[: cfg.evaluate.benchmark_max_items]
    return items


def _gold_letter(gold: str, choices: list[str], where: str) -> str:
    if len(gold) == 1 and gold.upper() in LETTERS[: len(choices)]:
        return gold.upper()
    if gold.isdigit() and int(gold) < len(choices):
        return LETTERS[int(gold)]
    if gold in choices:
        return LETTERS[choices.index(gold)]
    raise UserError(f"{where}: answer '{gold}' is not a letter, an index or one of the choices")


def messages(item: dict) -> list[dict]:
    if item["choices"]:
        lines = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item["choices"]))
        return prompts.load("eval_benchmark_choice").messages(question=item["question"], choices=lines)
    return prompts.load("eval_benchmark_exact").messages(question=item["question"])


def is_correct(item: dict, reply: str | None) -> bool:
    text = final_answer(reply)
    if item["choices"]:
        return _choice_letter(text, len(item["choices"])) == item["answer"]
    gold = item["answer"].replace(",", "")
    if _NUMBER.fullmatch(gold):
        numbers = _NUMBER.findall(text)
        return bool(numbers) and _same_number(numbers[-1].replace(",", ""), gold)
    first = text.splitlines()[0] if text else ""
    return tokens(first) == tokens(gold)


def _choice_letter(text: str, n: int) -> str | None:
    text = text.upper() if len(text) <= 3 else text
    for pattern in _CHOICE:
        m = pattern.search(text)
        if m and m.group(1).upper() in LETTERS[:n]:
            return m.group(1).upper()
    return None


def _same_number(a: str, b: str) -> bool:
    try:
        return abs(float(a) - float(b)) < 1e-9
    except ValueError:
        return False


def run_benchmark(run: Run, rec: StageRecord, cfg: Config) -> list[dict]:
    """eval_answers rows (split 'benchmark'): each item's reply and whether it is correct, for base and student."""
    path = cfg.evaluate.benchmark_file
    items = load_items(path, cfg)
    kind = "benchmark:" + path.rstrip("/").rsplit("/", 1)[-1].split(".")[0]
    rows = []
    for system in SYSTEMS:
        replies = generate(run, rec, [{"id": it["id"], "messages": messages(it)} for it in items],
                           engine_for(cfg, system), f"eval_benchmark_{system}")
        for it in items:
            r = replies.get(it["id"]) or {"error": "no reply"}
            rows.append({"question_id": it["id"], "kind": kind, "system": system, "question": it["question"],
                         "answer": r.get("answer"), "reference": it["answer"], "error": r.get("error"),
                         "correct": r.get("error") is None and is_correct(it, r.get("answer"))})
    rec.rows_in, rec.rows_out = len(items), len(rows)
    return rows


def summary(rows: list[dict], n_boot: int, seed: int = 0) -> list[dict]:
    """eval_results rows: accuracy per system, and the student's change against base with a paired interval."""
    out = []
    by_kind: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], {}).setdefault(r["system"], {})[r["question_id"]] = float(bool(r["correct"]))
    for kind, systems in sorted(by_kind.items()):
        for system, scores in sorted(systems.items()):
            values = list(scores.values())
            low, high = bootstrap_ci(values, n_boot, seed)
            out.append({"metric": "benchmark", "system_a": system, "system_b": None, "criterion": None, "kind": kind,
                        "n": len(values), "value": sum(values) / len(values), "ci_low": low, "ci_high": high})
        if {"student", "base"} <= systems.keys():
            common = sorted(systems["student"].keys() & systems["base"].keys())
            diffs = [systems["student"][i] - systems["base"][i] for i in common]
            low, high = bootstrap_ci(diffs, n_boot, seed)
            out.append({"metric": "benchmark_change", "system_a": "student", "system_b": "base", "criterion": None,
                        "kind": kind, "n": len(diffs), "value": sum(diffs) / len(diffs) if diffs else float("nan"),
                        "ci_low": low, "ci_high": high})
    return out
