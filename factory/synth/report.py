"""The quality report: what a run's `qa` table is worth, measured against issue 13's targets.

    python -m factory.synth.report RUN_FOLDER [--json]

`quality_report(run)` returns one JSON-able dict (the manifest's `quality` section): rows
per kind, split and question set; answer lengths; groundedness; retrieval recall of the
source; the share of local answers supported by their source chunk; duplicate answers;
targets that carry citations, chunk ids or passage labels; test answers equal or
near-equal to a train answer; questions in the corpus owner's voice. `targets` lists each
target with its threshold and whether it holds. `figures(quality)` draws the card's plots
from that dict alone, so a published copy can redraw them without the run's tables.

Memory: the qa shards are streamed in batches of the columns needed. What stays on the
driver per row is a few numbers and a MinHash signature (NUM_PERM uint32, 512 bytes);
of the chunks table only the ids and the text of the source chunks of local rows.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sys
import time
import zlib
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow.parquet as pq

from factory.synth.text import content_words, shingles, support
from factory.voice import SAMPLE_WORDS, detect_voice, first_person_rate

if TYPE_CHECKING:
    from factory.pipeline import Run, StageRecord

KINDS = ("local", "global", "entity", "relationship", "unanswerable")
# A local answer is supported when this share of its content words is in its source chunk.
SUPPORTED = 0.8
# Two answers are near-equal at this MinHash-estimated Jaccard of their word shingles.
NEAR_EQUAL = 0.9
# Issue 13's targets: (name, operator, threshold, what it measures).
TARGETS = (
    ("local_supported", ">=", 0.90, "local answers supported by their source chunk (share)"),
    ("duplicate_answers", "<=", 0.01, "rows sharing an answer with a different question (share)"),
    ("citations", "<=", 0, "targets with citations, chunk ids or passage labels (rows)"),
    ("cross_split_overlap", "<=", 0, "test answers equal or near-equal to a train answer (rows)"),
    ("personal_voice", "<=", 0.05, "questions in the owner's first person, reference corpora (share)"),
)
QUANTILES = (0, 10, 25, 50, 75, 90, 100)
LENGTH_EDGES = (0, 50, 100, 200, 400, 800, 1600, 3200, 6400, 12800)  # chars; the last bin is open
GROUNDEDNESS_BINS = 10
BATCH_ROWS = 2048
EXAMPLES = 5  # qa ids kept per failing measure, to look at
NUM_PERM, BANDS = 128, 16  # LSH: 16 bands of 8 find pairs at Jaccard 0.9 with p > 0.9999

# What a clean target never contains: lineage belongs in its columns, not in the text.
CITATIONS = {
    "data_citation": re.compile(r"\[Data:", re.IGNORECASE),
    "chunk_label": re.compile(r"\[chunk\b", re.IGNORECASE),
    "report_label": re.compile(r"\[report\s*\d+\]", re.IGNORECASE),
    "content_hash": re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])(?:[0-9a-f]{16}|[0-9a-f]{20}|[0-9a-f]{64})\b"),
    # "In <title> (2025-03-27):" or "<title> (2025-03-27) says": a passage's label copied into the text.
    "title_date_label": re.compile(r"\(\d{4}-\d{2}-\d{2}\)(?::|\s+says\b)"),
}
# One search finds whether a text has any of them; only then is each looked for.
_ANY_CITATION = re.compile("|".join(f"(?:{p.pattern})" for p in CITATIONS.values()), re.IGNORECASE)
_ID_TOKEN = re.compile(r"[\w.-]{8,}")
# "Tell me about X": the asker addressing the assistant, not the corpus owner's voice.
_ADDRESSEE = re.compile(r"\b(?:tell|show|give|remind|help|explain to)\s+me\b", re.IGNORECASE)
_THINK = re.compile(r"\s*<think>.*?</think>\s*", re.DOTALL)


# ---- reading ---------------------------------------------------------------------------
def _batches(run: "Run", table: str, columns: list[str], split: str | None = None) -> Iterator[dict[str, list]]:
    """`table`'s rows in batches of BATCH_ROWS, as {column: values}; absent columns are None."""
    for path in run.table_files(table, split):
        with run.fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            present = [c for c in columns if c in pf.schema_arrow.names]
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=present):
                values = {c: batch.column(c).to_pylist() for c in present}
                yield {c: values.get(c, [None] * batch.num_rows) for c in columns}


def final_answer(messages: list[dict] | None, answer: str, reasoning: str | None, mode: str) -> str:
    """The answer the student learns: the last assistant turn without its reasoning
    (synthesis's `target()` formats: think_tags, inline "Answer: ", none)."""
    from factory.synth import target  # not at import: synthesis imports this module

    turns = [m["content"] for m in messages or [] if m.get("role") == "assistant"]
    if not turns:
        return answer or ""
    content = turns[-1] or ""
    prefix = target("", reasoning, mode) if reasoning else ""
    if prefix and content.startswith(prefix):
        return content[len(prefix):]
    think = _THINK.match(content)
    return content[think.end():] if think else content


# ---- near-equal answers -------------------------------------------------------------
_RNG = np.random.default_rng(20250314)
# datasketch's "affine32" scheme (a shingle's hash mixed by murmur's finalizer, then h -> a*h + b
# mod 2^32 with a odd per permutation), applied to a whole batch's shingles at once:
# datasketch's MinHash does it one row at a time in Python, ~1 ms a row here.
_A = _RNG.integers(0, 2**31, NUM_PERM, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
_B = _RNG.integers(0, 2**32, NUM_PERM, dtype=np.uint64).astype(np.uint32)
_MAX_GRAMS = 32768  # shingles hashed at once: 32k x NUM_PERM x 4 bytes = 16 MB


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def signatures(texts: list[str]) -> np.ndarray:
    """MinHash signatures (len(texts) x NUM_PERM, uint32) of each text's word shingles."""
    out = np.full((len(texts), NUM_PERM), np.iinfo(np.uint32).max, dtype=np.uint32)
    grams = [[zlib.crc32(g.encode()) for g in shingles(t)] for t in texts]
    start = 0
    while start < len(texts):
        end, total = start, 0
        while end < len(texts) and (end == start or total + len(grams[end]) <= _MAX_GRAMS):
            total += len(grams[end])
            end += 1
        rows = [i for i in range(start, end) if grams[i]]
        if rows:
            flat = _fmix32(np.fromiter((h for i in rows for h in grams[i]), np.uint32, total))
            hashed = _A[:, None] * flat + _B[:, None]  # wraps mod 2^32; a row per permutation: reduced along memory
            offsets = np.cumsum([0] + [len(grams[i]) for i in rows[:-1]])
            out[rows] = np.minimum.reduceat(hashed, offsets, axis=1).T
        start = end
    return out


def near_pairs(sig: np.ndarray) -> tuple[np.ndarray, dict[int, set[int]]]:
    """Group identical signatures, then find pairs of distinct ones whose estimated Jaccard
    is at least NEAR_EQUAL (LSH bands propose, the signatures decide). Returns each row's
    group and each group's near-equal neighbours."""
    if not len(sig):
        return np.zeros(0, dtype=np.int64), {}
    unique, group = np.unique(sig, axis=0, return_inverse=True)
    neighbours: dict[int, set[int]] = defaultdict(set)
    width = NUM_PERM // BANDS
    for band in range(BANDS):
        key = np.zeros(len(unique), dtype=np.uint64)
        for col in unique[:, band * width:(band + 1) * width].T:
            key = key * np.uint64(0x100000001B3) + col  # wraps: a 64-bit key per band
        _, slot, count = np.unique(key, return_inverse=True, return_counts=True)
        shared = np.flatnonzero(count[slot] > 1)  # most keys are one signature's alone
        order = shared[np.argsort(key[shared], kind="stable")]
        cuts = np.flatnonzero(np.diff(key[order])) + 1
        for members in np.split(order, cuts) if len(order) else ():
            for i, a in enumerate(members[:-1]):
                rest = members[i + 1:]
                close = rest[(unique[rest] == unique[a]).mean(axis=1) >= NEAR_EQUAL]
                for b in close.tolist():
                    neighbours[int(a)].add(b)
                    neighbours[b].add(int(a))
    return group.ravel(), neighbours


# ---- the report ------------------------------------------------------------------------
def _quantiles(values: list[float], digits: int) -> dict[str, float] | None:
    if not values:
        return None
    q = np.percentile(np.asarray(values, dtype=float), QUANTILES)
    return {f"p{p}": round(float(v), digits) for p, v in zip(QUANTILES, q)} | {"mean": round(float(np.mean(values)), digits)}


def _share(n: int, of: int) -> float | None:
    return round(n / of, 4) if of else None


def _kinds(seen) -> list[str]:
    """The kinds in `seen`, in KINDS order, unknown ones last."""
    seen = set(seen)
    return [k for k in KINDS if k in seen] + sorted(seen - set(KINDS))


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def quality_report(run: "Run", rec: "StageRecord | None" = None) -> dict[str, Any]:
    """Measure the run's qa table (see the module docstring); JSON-able. Called by the synthesis
    stage with its record `rec`: the voice it decided is read there (the manifest has it only after
    the stage), and the seconds this took go to its stats."""
    start = time.perf_counter()
    mode = run.cfg.synth.reasoning
    # Pass 1: which chunks local answers must be checked against.
    needed = {cid for b in _batches(run, "qa", ["kind", "source_chunk_id"])
              for kind, cid in zip(b["kind"], b["source_chunk_id"]) if kind == "local" and cid}
    # Pass 2: chunk ids (a target must not quote one), source texts, a sample for the corpus's voice.
    chunk_ids: set[str] = set()
    sources: dict[str, str] = {}
    sample, sample_words = [], 0
    for b in _batches(run, "chunks", ["id", "text"]):
        chunk_ids.update(b["id"])
        for cid, text in zip(b["id"], b["text"]):
            if cid in needed:
                sources[cid] = text
            if sample_words < SAMPLE_WORDS:
                sample.append(text)
                sample_words += len(text.split())

    rows: Counter = Counter()
    by_set: Counter = Counter()
    lengths: dict[str, list[int]] = defaultdict(list)
    grounded: dict[str, list[float]] = defaultdict(list)
    ungraded: Counter = Counter()
    recall: Counter = Counter()
    local = Counter()
    cited, cited_by_pattern, cited_by_kind = 0, Counter(), Counter()
    personal, personal_by_kind = 0, Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    ids, kinds, questions, exact, is_test, sigs = [], [], [], [], [], []

    def example(measure: str, qa_id: str) -> None:
        if len(examples[measure]) < EXAMPLES:
            examples[measure].append(qa_id)

    # Pass 3: the qa table, once, keeping per row only what the aggregates need.
    columns = ["id", "kind", "split", "question", "answer", "reasoning", "messages", "source_chunk_id",
               "retrieved_source", "groundedness", "question_set"]
    for b in _batches(run, "qa", columns):
        answers = [final_answer(m, a, r, mode) for m, a, r in zip(b["messages"], b["answer"], b["reasoning"])]
        sigs.append(signatures(answers))
        for i, answer in enumerate(answers):
            qa_id, kind, split, question = b["id"][i], b["kind"][i], b["split"][i], b["question"][i]
            rows[(kind, split)] += 1
            by_set[(b["question_set"][i] or "main", kind, split)] += 1
            lengths[kind].append(len(answer))
            if b["groundedness"][i] is None:
                ungraded[kind] += 1
            else:
                grounded[kind].append(b["groundedness"][i])
            if b["retrieved_source"][i] is not None:
                recall[(kind, "rows")] += 1
                recall[(kind, "hits")] += bool(b["retrieved_source"][i])
            if kind == "local":
                source = sources.get(b["source_chunk_id"][i])
                local["rows"] += 1
                if source is None:
                    local["missing_source"] += 1
                    example("local_missing_source", qa_id)
                elif support(answer, source) >= SUPPORTED:
                    local["supported"] += 1
                else:
                    example("local_unsupported", qa_id)
            texts = {t for t in (answer, b["reasoning"][i], b["answer"][i]) if t}
            found = []
            if any(_ANY_CITATION.search(t) for t in texts):
                found = [name for name, pattern in CITATIONS.items() if any(pattern.search(t) for t in texts)]
            if any(not chunk_ids.isdisjoint(_ID_TOKEN.findall(t)) for t in texts):
                found.append("chunk_id")
            if found:
                cited += 1
                cited_by_kind[kind] += 1
                cited_by_pattern.update(found)
                example("citations", qa_id)
            if first_person_rate([_ADDRESSEE.sub("", question)]) > 0:
                personal += 1
                personal_by_kind[kind] += 1
            ids.append(qa_id)
            kinds.append(kind)
            questions.append(_hash64(" ".join(question.split())))
            exact.append(_hash64(" ".join(answer.split())))
            is_test.append(split == "test")

    total = len(ids)
    dup, overlap = _duplicates(np.concatenate(sigs) if sigs else np.zeros((0, NUM_PERM), np.uint32),
                               questions, exact, is_test, kinds, ids, examples)
    kind_order = _kinds({k for k, _ in rows})
    splits = sorted({s for _, s in rows}, key=lambda s: (s != "train", s))
    stats = rec.stats if rec else ((run.manifest.get("stages") or {}).get("synthesis") or {}).get("stats", {})
    decided = stats.get("voice")
    corpus_voice = detect_voice(sample)
    edges = list(LENGTH_EDGES)
    g_edges = [round(i / GROUNDEDNESS_BINS, 2) for i in range(GROUNDEDNESS_BINS + 1)]
    report: dict[str, Any] = {
        "kinds": kind_order,  # a list: the manifest stores its keys sorted
        "rows": {
            "total": total,
            "by_kind": {k: {s: rows[(k, s)] for s in splits} for k in kind_order},
            "by_question_set": {qs: {k: {s: by_set[(qs, k, s)] for s in splits} for k in kind_order
                                     if any(by_set[(qs, k, s)] for s in splits)}
                                for qs in sorted({qs for qs, _, _ in by_set})},
        },
        "answer_chars": {
            "quantiles": {k: _quantiles(lengths[k], 1) for k in kind_order},
            "histogram": {"edges": edges, "counts": {
                k: np.bincount(np.searchsorted(edges, lengths[k], side="right") - 1, minlength=len(edges)).tolist()
                for k in kind_order}},
        },
        "groundedness": {
            "quantiles": {k: _quantiles(grounded[k], 4) for k in kind_order},
            "missing": {k: ungraded[k] for k in kind_order},
            "histogram": {"edges": g_edges, "counts": {
                k: np.histogram(grounded[k], bins=g_edges)[0].tolist() for k in kind_order}},
        },
        "retrieval_recall": {
            k: {"rows": recall[(k, "rows")], "hits": recall[(k, "hits")],
                "share": _share(recall[(k, "hits")], recall[(k, "rows")])}
            for k in kind_order if recall[(k, "rows")]
        },
        "local_supported": {"rows": local["rows"], "supported": local["supported"],
                            "missing_source": local["missing_source"], "min_support": SUPPORTED,
                            "share": _share(local["supported"], local["rows"])},
        "duplicate_answers": dup | {"share": _share(dup["rows"], total), "near_equal": NEAR_EQUAL},
        "citations": {"rows": cited, "by_pattern": dict(sorted(cited_by_pattern.items())),
                      "by_kind": {k: cited_by_kind[k] for k in kind_order}},
        "cross_split_overlap": overlap,
        "voice": {"questions": total, "personal": personal, "share": _share(personal, total),
                  "by_kind": {k: personal_by_kind[k] for k in kind_order},
                  "decided": decided, "corpus": corpus_voice,
                  "corpus_first_person_rate": round(first_person_rate(sample), 4)},
        "examples": dict(sorted(examples.items())),
    }
    report["targets"] = _targets(report)
    if rec:
        rec.stats.setdefault("seconds", {})["quality_report"] = round(time.perf_counter() - start, 3)
    return report


def _duplicates(sig: np.ndarray, questions: list[int], exact: list[int], is_test: list[bool], kinds: list[str],
                ids: list[str], examples: dict[str, list[str]]) -> tuple[dict, dict]:
    """Rows whose answer equals or near-equals that of a row with a different question, and
    test rows whose answer equals or near-equals a train row's."""
    group, neighbours = near_pairs(sig)
    asked: dict[int, set[int]] = defaultdict(set)  # group -> question hashes
    in_train: set[int] = set()
    exact_asked: dict[int, set[int]] = defaultdict(set)
    exact_train: set[int] = set()
    for i, g in enumerate(group.tolist()):
        asked[g].add(questions[i])
        exact_asked[exact[i]].add(questions[i])
        if not is_test[i]:
            in_train.add(g)
            exact_train.add(exact[i])
    dup = {"rows": 0, "exact": 0, "by_kind": Counter()}
    over = {"test_rows": 0, "rows": 0, "exact": 0, "by_kind": Counter()}
    for i, g in enumerate(group.tolist()):
        near = neighbours.get(g, ())
        if len(exact_asked[exact[i]]) > 1:
            dup["exact"] += 1
        if len(asked[g]) > 1 or any(asked[n] - {questions[i]} for n in near):
            dup["rows"] += 1
            dup["by_kind"][kinds[i]] += 1
            if len(examples["duplicate_answers"]) < EXAMPLES:
                examples["duplicate_answers"].append(ids[i])
        if is_test[i]:
            over["test_rows"] += 1
            over["exact"] += exact[i] in exact_train
            if g in in_train or any(n in in_train for n in near):
                over["rows"] += 1
                over["by_kind"][kinds[i]] += 1
                if len(examples["cross_split_overlap"]) < EXAMPLES:
                    examples["cross_split_overlap"].append(ids[i])
    for d in (dup, over):
        d["by_kind"] = {k: d["by_kind"][k] for k in _kinds(kinds)}
    return dup, over


def _targets(report: dict) -> list[dict]:
    voice = report["voice"]
    reference = "reference" in (voice["corpus"], voice["decided"])
    values = {
        "local_supported": report["local_supported"]["share"],
        "duplicate_answers": report["duplicate_answers"]["share"],
        "citations": report["citations"]["rows"],
        "cross_split_overlap": report["cross_split_overlap"]["rows"],
        "personal_voice": voice["share"] if reference else None,  # a personal corpus may say "I"
    }
    out = []
    for name, op, threshold, what in TARGETS:
        value = values[name]
        holds = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        out.append({"name": name, "what": what, "value": value, "op": op, "threshold": threshold, "holds": holds})
    return out


# ---- figures for the card -------------------------------------------------------------
FIGURE_SIZE, FIGURE_DPI = (7.0, 3.2), 100


def figures(q: dict) -> dict[str, bytes]:
    """The card's plots, PNG bytes by name, drawn from the report alone. Deterministic: a
    fixed size and resolution and no metadata, so the same report gives the same bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = q["kinds"]
    out = {}
    for name, draw in _DRAW.items():
        fig, ax = plt.subplots(figsize=FIGURE_SIZE)
        draw(ax, q, kinds)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=FIGURE_DPI, metadata={"Software": None})
        plt.close(fig)
        out[name] = buf.getvalue()
    return out


def _grouped(ax, groups: list[str], series: dict[str, list[float]]) -> None:
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, values, width, label=label)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    if len(series) > 1:
        ax.legend(fontsize=7)


def _draw_rows_per_kind(ax, q: dict, kinds: list[str]) -> None:
    splits = sorted({s for per in q["rows"]["by_kind"].values() for s in per}, key=lambda s: (s != "train", s))
    _grouped(ax, kinds, {s: [q["rows"]["by_kind"][k].get(s, 0) for k in kinds] for s in splits})
    ax.set_ylabel("rows")
    ax.set_title("qa rows per kind and split")


def _draw_answer_chars(ax, q: dict, kinds: list[str]) -> None:
    h = q["answer_chars"]["histogram"]
    edges = h["edges"]
    labels = [str(lo) for lo in edges[:-1]] + [f"{edges[-1]}+"]
    _grouped(ax, labels, {k: h["counts"][k] for k in kinds})
    ax.set_xlabel("answer length (characters, bin start)")
    ax.set_ylabel("rows")
    ax.set_title("Answer lengths")


def _draw_groundedness(ax, q: dict, kinds: list[str]) -> None:
    h = q["groundedness"]["histogram"]
    edges = h["edges"]
    labels = [f"{lo:.1f}" for lo in edges[:-1]]
    _grouped(ax, labels, {k: h["counts"][k] for k in kinds if sum(h["counts"][k])})
    ax.set_xlabel("groundedness (bin start)")
    ax.set_ylabel("rows")
    ax.set_title("Groundedness of answers by their evidence")


def _draw_targets(ax, q: dict, kinds: list[str]) -> None:
    """Each measure as a share beside its target (counts as shares of their rows)."""
    target = {t["name"]: t for t in q["targets"]}
    over = q["cross_split_overlap"]
    bars = [
        ("local answers\nsupported", q["local_supported"]["share"], "local_supported"),
        ("retrieval recall\nof the source", q["retrieval_recall"].get("local", {}).get("share"), None),
        ("duplicate\nanswers", q["duplicate_answers"]["share"], "duplicate_answers"),
        ("targets with\ncitations", _share(q["citations"]["rows"], q["rows"]["total"]), "citations"),
        ("test answers\nnear a train one", _share(over["rows"], over["test_rows"]), "cross_split_overlap"),
        ("personal-voice\nquestions", q["voice"]["share"], "personal_voice"),
    ]
    for x, (_, value, name) in enumerate(bars):
        ax.bar(x, value or 0, 0.6, color="tab:blue")
        if name and target[name]["value"] is not None:  # the voice target applies to reference corpora only
            ax.hlines(target[name]["threshold"], x - 0.4, x + 0.4, colors="tab:red", linestyles="--", linewidth=1.2)
        ax.text(x, (value or 0) + 0.02, "n/a" if value is None else f"{value:.2f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(bars)), [label for label, _, _ in bars], fontsize=7)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("share")
    ax.set_title("Quality measures (red dashes: target)")


def _draw_by_kind(ax, q: dict, kinds: list[str]) -> None:
    _grouped(ax, kinds, {
        "duplicate answers": [q["duplicate_answers"]["by_kind"].get(k, 0) for k in kinds],
        "citations": [q["citations"]["by_kind"].get(k, 0) for k in kinds],
        "test near train": [q["cross_split_overlap"]["by_kind"].get(k, 0) for k in kinds],
        "personal voice": [q["voice"]["by_kind"].get(k, 0) for k in kinds],
    })
    ax.set_ylabel("rows")
    ax.set_title("Rows failing a measure, by kind")


_DRAW = {"rows_per_kind": _draw_rows_per_kind, "answer_chars": _draw_answer_chars,
         "groundedness": _draw_groundedness, "targets": _draw_targets, "by_kind": _draw_by_kind}


# ---- text for a terminal -------------------------------------------------------------
def format_report(q: dict) -> str:
    lines = ["targets:"]
    for t in q["targets"]:
        verdict = {True: "ok", False: "FAIL", None: "n/a"}[t["holds"]]
        lines.append(f"  {verdict:4} {t['name']:20} {t['value']!s:>8} (target {t['op']} {t['threshold']})  {t['what']}")
    lines.append(f"rows: {q['rows']['total']}")
    for kind in q["kinds"]:
        per = q["rows"]["by_kind"][kind]
        length = (q["answer_chars"]["quantiles"].get(kind) or {}).get("p50")
        g = (q["groundedness"]["quantiles"].get(kind) or {})
        lines.append(f"  {kind:13} {' '.join(f'{s}={n}' for s, n in per.items()):24} answer chars p50={length} "
                     f"groundedness p10={g.get('p10')} p50={g.get('p50')}")
    if len(q["rows"]["by_question_set"]) > 1:
        lines.append(f"question sets: {json.dumps(q['rows']['by_question_set'])}")
    for kind, r in q["retrieval_recall"].items():
        lines.append(f"retrieval recall of the source ({kind}): {r['share']} of {r['rows']}")
    ls = q["local_supported"]
    lines.append(f"local supported: {ls['supported']}/{ls['rows']} (no source chunk: {ls['missing_source']})")
    d, o = q["duplicate_answers"], q["cross_split_overlap"]
    lines.append(f"duplicate answers: {d['rows']} rows ({d['exact']} exact) by kind {d['by_kind']}")
    lines.append(f"citations: {q['citations']['rows']} rows, by pattern {q['citations']['by_pattern']}, "
                 f"by kind {q['citations']['by_kind']}")
    lines.append(f"cross-split overlap: {o['rows']} of {o['test_rows']} test rows ({o['exact']} exact) by kind {o['by_kind']}")
    v = q["voice"]
    lines.append(f"voice: {v['personal']}/{v['questions']} questions personal; decided {v['decided']}, corpus reads "
                 f"{v['corpus']} (first person {v['corpus_first_person_rate']})")
    for measure, some in q["examples"].items():
        lines.append(f"examples {measure}: {', '.join(some)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from factory.errors import UserError
    from factory.publish import open_run

    parser = argparse.ArgumentParser(prog="python -m factory.synth.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run folder (local or s3://)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        q = quality_report(open_run(args.run))
    except UserError as exc:
        print(f"ragtune: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(q, indent=2, sort_keys=True) if args.json else format_report(q))
    return 0


if __name__ == "__main__":
    sys.exit(main())
