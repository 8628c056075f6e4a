"""The quality report: what a run's `qa` table is worth, measured against issue 13's targets.

    python -m factory.synth.report RUN_FOLDER [--json]

`quality_report(run)` returns one JSON-able dict (the manifest's `quality` section): rows
per kind, split and question set; answer lengths; groundedness; retrieval recall of the
source; the share of local answers supported by their source chunk; duplicate answers;
targets that carry citations, chunk ids or passage labels; test answers equal or
near-equal to a train answer; questions in the corpus owner's voice. `targets` lists each
target with its threshold and whether it holds. `figures(quality)` draws the card's plots
from that dict alone, so a published copy can redraw them without the run's tables.

Speed (about 3 s of CPU per 100k rows): each measure runs on whole Arrow columns of a batch.
Words are split from the UTF-8 bytes and looked up once per distinct word (lexical.Vocabulary), exactly
as text.words() splits them; shingle hashes, MinHash, support and duplicates are numpy
over word ids; the citation and voice patterns are first searched by Arrow's RE2 as
supersets, and only the rows it flags by the Python patterns themselves.

Memory: the qa shards are streamed in batches of the columns needed. What stays on the
driver per row is its id, a few numbers and a MinHash signature (NUM_PERM uint32, 512
bytes); of the chunks table the ids and the content-word ids of the source chunks of
local rows; and one entry per distinct word.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import time
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import schemas
from factory.synth.lexical import MinHash, Vocabulary, support
from factory.synth.rows import target
from factory.text import without_think
from factory.voice import PERSONAL_THRESHOLD, SAMPLE_WORDS, first_person_rate

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
# Its own MinHash, seeded apart from the filters' (quality.FILTER): 16 bands of 8 find pairs at Jaccard 0.9
# with p > 0.9999, so a near pair the filters missed shows here.
NUM_PERM = 128
MEASURE = MinHash(NUM_PERM, bands=16, rows=8, seed=20250314)

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


# ---- reading ---------------------------------------------------------------------------
def _batches(run: "Run", table: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """`table`'s rows in Arrow batches of BATCH_ROWS with `columns`; an absent column is all nulls."""
    schema = schemas.schema_of(table)
    for path in run.table_files(table):
        with run.fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            present = [c for c in columns if c in pf.schema_arrow.names]
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=present):
                yield pa.RecordBatch.from_arrays(
                    [batch.column(c) if c in present else pa.nulls(batch.num_rows, schema.field(c).type) for c in columns],
                    names=columns)


def final_answer(messages: list[dict] | None, answer: str, reasoning: str | None, mode: str) -> str:
    """The answer the student learns: the last assistant turn without its reasoning
    (synthesis's `target()` formats: think_tags, inline "Answer: ", none)."""
    turns = [m["content"] for m in messages or [] if m.get("role") == "assistant"]
    return _answer_in(turns[-1] or "" if turns else None, answer, reasoning, mode)


def _answer_in(turn: str | None, answer: str | None, reasoning: str | None, mode: str) -> str:
    """The answer in an assistant `turn` (None when the row has none: the answer column is it)."""
    if turn is None:
        return answer or ""
    prefix = target("", reasoning, mode) if reasoning else ""
    if prefix and turn.startswith(prefix):
        return turn[len(prefix):]
    return without_think(turn)


def _final_answers(b: pa.RecordBatch, mode: str) -> pa.Array:
    """final_answer() of each row of `b`; Arrow finds the last assistant turns (no dict per message)."""
    messages = b.column("messages")
    role, content = pc.list_flatten(messages).flatten()
    turn = np.flatnonzero(pc.fill_null(pc.equal(role, "assistant"), False))
    row = pc.list_parent_indices(messages).to_numpy()[turn]
    last = np.full(len(b), -1)
    ends = np.append(row[1:] != row[:-1], True) if len(row) else np.zeros(0, bool)
    last[row[ends]] = turn[ends]
    turns = pc.fill_null(content.take(pa.array(np.maximum(last, 0))), "").to_pylist() if len(content) else [""] * len(b)
    columns = zip(last.tolist(), turns, b.column("answer").to_pylist(), b.column("reasoning").to_pylist())
    answers = [_answer_in(t if i >= 0 else None, a, r, mode) for i, t, a, r in columns]
    return pa.array(answers, pa.string())


# ---- citations and voice, searched by Arrow ------------------------------------------------
# Supersets of what CITATIONS find (RE2's (?i) matches every character Python's does for these letters,
# and "." any one code point but a newline, which \d never is): Arrow's RE2 scans whole columns for
# them, and only the rows it flags are searched by the patterns themselves.
_MAYBE_CITATION = r"(?i:\[(?:data:|chunk|report))|[0-9a-f]{16}|\(.{10}\)"
# A superset of the questions first_person_rate() finds personal once the asker's "tell me" is gone: a
# first-person word (voice._FIRST_PERSON) after a non-letter (an apostrophe too: removing "tell me" can
# join one to it) and before no word character.
_MAYBE_PERSONAL = (r"(?:^|[^A-Za-z])(?:[Ii]|[Mm][EeYy]|[Mm][Ii][Nn][Ee]|[Mm][Yy][Ss][Ee][Ll][Ff]"
                   r"|[Ii]['’](?:[Mm]|[Vv][Ee]|[Dd]|[Ll][Ll]))(?:$|[^A-Za-z'’])")


def _any(columns: list[pa.Array], pattern: str) -> np.ndarray:
    """Rows where any of `columns` matches the RE2 `pattern`."""
    hit = np.zeros(len(columns[0]), bool)
    for col in columns:
        hit |= pc.fill_null(pc.match_substring_regex(col, pattern), False).to_numpy(zero_copy_only=False)
    return hit


def _re2_literal(text: str) -> str:
    """An RE2 pattern that matches `text` as it is (every character escaped as \\x{...})."""
    return "".join(f"\\x{{{ord(c):x}}}" for c in text)


def _citations(texts: set[str], chunk_ids: set[str]) -> list[str]:
    """The CITATIONS patterns found in `texts`, and "chunk_id" when one quotes a chunk id."""
    found = []
    if any(_ANY_CITATION.search(t) for t in texts):
        found = [name for name, pattern in CITATIONS.items() if any(pattern.search(t) for t in texts)]
    if any(not chunk_ids.isdisjoint(_ID_TOKEN.findall(t)) for t in texts):
        found.append("chunk_id")
    return found


# ---- the report ------------------------------------------------------------------------
def _quantiles(values: np.ndarray, digits: int) -> dict[str, float] | None:
    if not len(values):
        return None
    q = np.percentile(np.asarray(values, dtype=float), QUANTILES)
    return {f"p{p}": round(float(v), digits) for p, v in zip(QUANTILES, q)} | {"mean": round(float(np.mean(values)), digits)}


def _share(n: int, of: int) -> float | None:
    return round(n / of, 4) if of else None


def _kinds(seen) -> list[str]:
    """The kinds in `seen`, in KINDS order, unknown ones last."""
    seen = set(seen)
    return [k for k in KINDS if k in seen] + sorted(seen - set(KINDS))


def _hashes(texts: pa.Array) -> np.ndarray:
    """A 64-bit hash of each text with its whitespace normalized: equal texts, equal hashes (in this process)."""
    return np.fromiter((hash(" ".join(t.split())) for t in pc.fill_null(texts, "").to_pylist()), np.int64, len(texts))


def _first(mask: np.ndarray, k: int) -> np.ndarray:
    return np.flatnonzero(mask)[:k]


def quality_report(run: "Run", rec: "StageRecord | None" = None) -> dict[str, Any]:
    """Measure the run's qa table (see the module docstring); JSON-able. Called by the synthesis
    stage with its record `rec`: the voice it decided is read there (the manifest has it only after
    the stage), and the seconds this took go to its stats."""
    start = time.perf_counter()
    mode = run.cfg.synth.reasoning
    # Pass 1: which chunks local answers must be checked against.
    needed: set[str] = set()
    for b in _batches(run, "qa", ["kind", "source_chunk_id"]):
        needed.update(pc.unique(b.column("source_chunk_id").filter(pc.equal(b.column("kind"), "local"))).to_pylist())
    needed -= {None, ""}
    # Pass 2: chunk ids (a target must not quote one), the content words of source chunks, a sample for
    # the corpus's voice.
    words = Vocabulary()
    chunk_ids: set[str] = set()
    source_of: dict[str, int] = {}  # chunk id -> source number (of the last chunk with that id)
    source_words = []  # source number << 32 | word id of each content word of a source chunk
    n_sources = 0
    sample, sample_words = [], 0
    wanted = pa.array(sorted(needed), pa.string())
    for b in _batches(run, "chunks", ["id", "text"]):
        chunk_ids.update(b.column("id").to_pylist())
        is_source = pc.is_in(b.column("id"), value_set=wanted)
        sources = b.filter(is_source)
        row, word = words.encode(sources.column("text"))
        number = np.arange(n_sources, n_sources + len(sources), dtype=np.int64)
        n_sources += len(sources)
        source_of.update(zip(sources.column("id").to_pylist(), number.tolist()))
        content = words.content[word]
        source_words.append(number[row[content]] << 32 | word[content])
        for text in b.column("text").to_pylist() if sample_words < SAMPLE_WORDS else ():
            sample.append(text)
            sample_words += len(text.split())
            if sample_words >= SAMPLE_WORDS:
                break
    in_source = np.sort(np.concatenate(source_words)) if source_words else np.zeros(0, np.int64)
    # A quoted chunk id (an _ID_TOKEN: 8+ characters) contains the ids' common prefix ("" when they share none).
    long_ids = [c for c in chunk_ids if len(c) >= 8]
    maybe_cited = _MAYBE_CITATION + (f"|{_re2_literal(os.path.commonprefix(long_ids))}" if long_ids else "")

    rows: Counter = Counter()
    by_set: Counter = Counter()
    lengths: dict[str, list[np.ndarray]] = defaultdict(list)
    grounded: dict[str, list[np.ndarray]] = defaultdict(list)
    ungraded: Counter = Counter()
    recall: Counter = Counter()
    local = Counter()
    cited, cited_by_pattern, cited_by_kind = 0, Counter(), Counter()
    personal, personal_by_kind = 0, Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    ids, kinds, questions, exact, is_test, sigs = [], [], [], [], [], []
    kind_codes: dict[str, int] = {}

    def example(measure: str, qa_ids: pa.Array, mask: np.ndarray) -> None:
        room = EXAMPLES - len(examples[measure])
        if room > 0 and mask.any():
            examples[measure] += qa_ids.take(pa.array(_first(mask, room))).to_pylist()

    # Pass 3: the qa table, once, keeping per row only what the aggregates need.
    columns = ["id", "kind", "split", "question", "answer", "reasoning", "messages", "source_chunk_id",
               "retrieved_source", "groundedness", "question_set"]
    for b in _batches(run, "qa", columns):
        answers = _final_answers(b, mode)
        qa_ids, question = b.column("id"), b.column("question")
        kind_list, split_list = b.column("kind").to_pylist(), b.column("split").to_pylist()
        rows.update(zip(kind_list, split_list))
        by_set.update(zip((s or "main" for s in b.column("question_set").to_pylist()), kind_list, split_list))
        kind = np.fromiter((kind_codes.setdefault(k, len(kind_codes)) for k in kind_list), np.int64, len(b))
        length = pc.utf8_length(answers).to_numpy().astype(np.int64)
        g = b.column("groundedness")
        g_valid, g_value = g.is_valid().to_numpy(zero_copy_only=False), g.to_numpy(zero_copy_only=False)
        r = b.column("retrieved_source")
        r_valid, r_hit = r.is_valid().to_numpy(zero_copy_only=False), pc.fill_null(r, False).to_numpy(zero_copy_only=False)

        row, word = words.encode(answers)
        sigs.append(MEASURE.of_words(row, word, len(b), words))
        source = np.fromiter((source_of.get(c, -1) for c in b.column("source_chunk_id").to_pylist()), np.int64, len(b))
        content = words.content[word]
        supported = support(row[content], word[content], source, in_source)
        is_local = kind == kind_codes.get("local", -1)
        missing = is_local & (source < 0)
        unsupported = is_local & (source >= 0) & (supported < SUPPORTED)
        local["rows"] += int(is_local.sum())
        local["missing_source"] += int(missing.sum())
        local["supported"] += int((is_local & (source >= 0) & (supported >= SUPPORTED)).sum())
        example("local_missing_source", qa_ids, missing)
        example("local_unsupported", qa_ids, unsupported)

        texts = [answers, b.column("reasoning"), b.column("answer")]
        maybe = _any(texts, maybe_cited)
        is_cited = np.zeros(len(b), bool)
        for i in np.flatnonzero(maybe).tolist():
            found_in = _citations({t for t in (col[i].as_py() for col in texts) if t}, chunk_ids)
            if found_in:
                is_cited[i] = True
                cited_by_pattern.update(found_in)
                cited_by_kind[kind_list[i]] += 1
        cited += int(is_cited.sum())
        example("citations", qa_ids, is_cited)
        for i in np.flatnonzero(_any([question], _MAYBE_PERSONAL)).tolist():
            if first_person_rate([_ADDRESSEE.sub("", question[i].as_py())]) > 0:
                personal += 1
                personal_by_kind[kind_list[i]] += 1

        for name, code in kind_codes.items():
            mine = kind == code
            lengths[name].append(length[mine])
            grounded[name].append(g_value[mine & g_valid])
            ungraded[name] += int((mine & ~g_valid).sum())
            recall[(name, "rows")] += int((mine & r_valid).sum())
            recall[(name, "hits")] += int((mine & r_valid & r_hit).sum())
        ids.append(qa_ids)
        kinds.append(kind)
        questions.append(_hashes(question))
        exact.append(_hashes(answers))
        is_test.append(pc.equal(b.column("split"), "test").to_numpy(zero_copy_only=False))

    total = sum(rows.values())
    names = list(kind_codes)
    dup, overlap = _duplicates(
        np.concatenate(sigs) if sigs else np.zeros((0, NUM_PERM), np.uint32),
        *(np.concatenate(x) if x else np.zeros(0, np.int64) for x in (questions, exact, is_test, kinds)),
        names, pa.concat_arrays(ids) if ids else pa.array([], pa.string()), examples)
    kind_order = _kinds({k for k, _ in rows})
    splits = sorted({s for _, s in rows}, key=lambda s: (s != "train", s))
    stats = rec.stats if rec else ((run.manifest.get("stages") or {}).get("synthesis") or {}).get("stats", {})
    decided = stats.get("voice")
    corpus_rate = first_person_rate(sample)
    corpus_voice = "personal" if corpus_rate >= PERSONAL_THRESHOLD else "reference"  # voice.detect_voice, one pass
    lengths = {k: np.concatenate(v) for k, v in lengths.items()}
    grounded = {k: np.concatenate(v) for k, v in grounded.items()}
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
                  "corpus_first_person_rate": round(corpus_rate, 4)},
        "examples": dict(sorted((m, some) for m, some in examples.items() if some)),
    }
    report["targets"] = _targets(report)
    if rec:
        rec.stats.setdefault("seconds", {})["quality_report"] = round(time.perf_counter() - start, 3)
    return report


def _distinct_questions(key: np.ndarray, questions: np.ndarray) -> np.ndarray:
    """For each row, how many distinct questions the rows sharing its key ask."""
    _, at = np.unique(key, return_inverse=True)
    order = np.lexsort((questions, at))
    k, q = at[order], questions[order]
    new = np.ones(len(k), bool)
    new[1:] = (k[1:] != k[:-1]) | (q[1:] != q[:-1])
    return np.bincount(k[new], minlength=len(key))[at]


def _duplicates(sig: np.ndarray, questions: np.ndarray, exact: np.ndarray, is_test: np.ndarray, kinds: np.ndarray,
                names: list[str], ids: pa.Array, examples: dict[str, list[str]]) -> tuple[dict, dict]:
    """Rows whose answer equals or near-equals that of a row with a different question, and
    test rows whose answer equals or near-equals a train row's. `kinds` are codes into `names`."""
    group, neighbours = MEASURE.near_pairs(sig, NEAR_EQUAL)
    is_test = is_test.astype(bool)
    duplicate = _distinct_questions(group, questions) > 1
    # Near-equal groups are few: their rows are checked one by one.
    near_rows = np.flatnonzero(np.isin(group, list(neighbours)))
    asked: dict[int, set[int]] = defaultdict(set)
    for i in np.flatnonzero(np.isin(group, list({n for near in neighbours.values() for n in near}))).tolist():
        asked[int(group[i])].add(int(questions[i]))
    for i in near_rows.tolist():
        duplicate[i] |= any(asked[n] - {int(questions[i])} for n in neighbours[int(group[i])])
    in_train = np.zeros(len(sig), bool)
    in_train[group[~is_test]] = True
    near_train = np.zeros(len(sig), bool)
    for g, near in neighbours.items():
        near_train[g] = any(in_train[n] for n in near)
    overlap = is_test & (in_train[group] | near_train[group])
    for measure, mask in (("duplicate_answers", duplicate), ("cross_split_overlap", overlap)):
        if mask.any():
            examples[measure] += ids.take(pa.array(_first(mask, EXAMPLES - len(examples[measure])))).to_pylist()
    order = _kinds(names)

    def by_kind(mask: np.ndarray) -> dict[str, int]:
        counts = np.bincount(kinds[mask], minlength=len(names))
        return {k: int(counts[names.index(k)]) for k in order}

    dup = {"rows": int(duplicate.sum()), "exact": int((_distinct_questions(exact, questions) > 1).sum()),
           "by_kind": by_kind(duplicate)}
    over = {"test_rows": int(is_test.sum()), "rows": int(overlap.sum()),
            "exact": int(np.isin(exact[is_test], exact[~is_test]).sum()), "by_kind": by_kind(overlap)}
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
    from factory.pipeline import open_run

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
