"""The dataset card: `README.md` with the YAML front matter the Hub and `datasets` read.

The front matter's `configs` map each table to its files, which is what makes a
folder loadable with `datasets.load_dataset(folder, "qa")`; the body says what a
person needs before using the data: source, teacher, counts, costs, filters,
retrieval quality, examples and how to load it. Rendering is deterministic (no
clocks), so the same run always gives the same card.
"""

from __future__ import annotations

import json
import os
from typing import Any

import yaml

import schemas
from factory.pipeline import Run
from factory.snapshot import DEFAULT_CONFIG, Snapshot, snapshot

SAMPLE_CHARS = 400
TAGS = ["ragtune", "synthetic", "rag", "graphrag", "knowledge-graph", "rag-tuned-llm"]


def size_category(n: int) -> str:
    """The Hub's `size_categories` bucket for `n` rows."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
    for bound, label in bounds:
        if n < bound:
            return label
    return "n>1T" if n >= 10**12 else "1B<n<10B"


def front_matter(snap: Snapshot, data_files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    output = snap.manifest.get("config", {}).get("output", {})
    rows = snap.rows()
    main = DEFAULT_CONFIG if DEFAULT_CONFIG in data_files else next(iter(data_files), None)
    configs = []
    for table, splits in data_files.items():
        entry: dict[str, Any] = {"config_name": table}
        if table == main:
            entry["default"] = True
        entry["data_files"] = [{"split": split, "path": path} for split, path in _splits(splits)]
        configs.append(entry)
    return {
        "pretty_name": pretty_name(snap),
        "license": output.get("license", "other"),
        "language": output.get("language", ["en"]),
        "task_categories": ["question-answering", "text-generation"],
        "size_categories": [size_category(sum(rows.get(main, {}).values()))],
        "tags": TAGS,
        "configs": configs,
    }


def pretty_name(snap: Snapshot) -> str:
    corpus = snap.manifest.get("config", {}).get("corpus", {}).get("path") or "corpus"
    return f"ragtune: {os.path.basename(corpus.rstrip('/')) or corpus}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return "_none_\n"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:.3f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _role(role: dict | None) -> str:
    if not role:
        return "not used"
    if role.get("engine") in (None, "none"):
        return "rule-based (no LLM)"
    adapter = f" + adapter `{role['adapter']}`" if role.get("adapter") else ""
    return f"`{role.get('model')}` via {role.get('engine')}{adapter}"


def _recall_stats(stages: dict[str, dict]) -> list[list[Any]]:
    """Every statistic whose name mentions recall, wherever a stage reported it."""
    out = []

    def walk(stage: str, prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(stage, f"{prefix}.{k}" if prefix else str(k), v)
        elif "recall" in prefix.lower():
            out.append([stage, prefix, value])

    for stage, entry in stages.items():
        walk(stage, "", entry.get("stats") or {})
    return out


def _split_key(split: str) -> tuple[int, str]:
    return ({"train": 0, "validation": 1, "test": 2}.get(split, 3), split)


def _splits(splits: dict[str, Any]) -> list[tuple[str, Any]]:
    return sorted(splits.items(), key=lambda kv: _split_key(kv[0]))


def _shown(path: str | None) -> str | None:
    """A corpus as the card names it: a local folder by its last part (a card travels, a home folder's
    path should not), a URL or dataset id as it is."""
    if path and os.path.isabs(path):
        return os.path.basename(path.rstrip("/")) or path
    return path


def _load_section(where: str, data_files: dict[str, dict[str, Any]]) -> str:
    if where.startswith("hf://datasets/"):
        repo = where[len("hf://datasets/"):].strip("/")
        return (
            "```python\nfrom datasets import load_dataset\n\n"
            f'qa = load_dataset("{repo}", "qa")            # train / test\n'
            f'entities = load_dataset("{repo}", "entities")\n```\n'
        )
    if where.startswith("s3://"):
        base = where.rstrip("/")
        return (
            "```python\nfrom datasets import load_dataset\n\n"
            'opts = {"client_kwargs": {"endpoint_url": ...}}  # or nothing on AWS\n'
            f'qa = load_dataset("parquet", data_files={{"train": "{base}/qa/train-*.parquet",\n'
            f'                                          "test": "{base}/qa/test-*.parquet"}},\n'
            "                  storage_options=opts)\n```\n\n"
            "The globs are safe whenever no publish is in progress; `manifest.json` (`files`) names "
            "the exact files of the current version (see docs/publishing.md).\n\n"
            f"DuckDB: `SELECT kind, count(*) FROM '{base}/qa/train-*.parquet' GROUP BY kind`\n"
        )
    return (
        "```python\nfrom datasets import load_dataset\n\n"
        f'qa = load_dataset("{where}", "qa")            # train / test\n'
        f'chunks = load_dataset("{where}", "chunks")\n```\n\n'
        f"pandas: `pd.read_parquet(\"{where}/qa\")` (both splits; the `split` column tells them apart)\n"
    )


def _quality_section(q: dict, figures: dict[str, str]) -> list[str]:
    """The run's quality report (manifest `quality`, factory/synth/report.py): targets, per-kind figures, plots."""
    verdict = {True: "yes", False: "**no**", None: "n/a"}
    out = ["\n## Quality\n",
           "Measured by the factory on this table against its targets (`quality` in `manifest.json` has every number).\n",
           _table(["measure", "value", "target", "holds"],
                  [[t["what"], "n/a" if t["value"] is None else t["value"], f"{t['op']} {t['threshold']}", verdict[t["holds"]]]
                   for t in q["targets"]])]
    lengths, grounded = q["answer_chars"]["quantiles"], q["groundedness"]["quantiles"]
    recall = q["retrieval_recall"]
    out.append(_table(
        ["kind", "rows", "answer chars p50 [p10, p90]", "groundedness p10 / p50", "retrieval recall of the source",
         "duplicate answers", "with citations", "test near train", "personal-voice questions"],
        [[k, sum(q["rows"]["by_kind"][k].values()), _quantiles(lengths.get(k), "{p50:g} [{p10:g}, {p90:g}]"),
          _quantiles(grounded.get(k), "{p10:g} / {p50:g}"),
          (recall.get(k) or {}).get("share", "–"), q["duplicate_answers"]["by_kind"].get(k, 0),
          q["citations"]["by_kind"].get(k, 0), q["cross_split_overlap"]["by_kind"].get(k, 0), q["voice"]["by_kind"].get(k, 0)]
         for k in q["kinds"]]))
    voice = q["voice"]
    out.append(f"Voice: the corpus reads as {voice['corpus']} (first-person rate {voice['corpus_first_person_rate']}); "
               f"synthesis wrote in the {voice['decided'] or 'unrecorded'} voice.\n")
    out += [f"![{name.replace('_', ' ')}]({path})\n" for name, path in figures.items()]
    return out


def _quantiles(quantiles: dict | None, form: str) -> str:
    return form.format(**quantiles) if quantiles else "–"


def render(snap: Snapshot, data_files: dict[str, dict[str, Any]], where: str, figures: dict[str, str] | None = None) -> str:
    """The card for `snap`, whose configs point at `data_files` ({table: {split: glob or [paths]}})
    and whose quality plots are at `figures` ({name: path relative to the card})."""
    m = snap.manifest
    cfg = m.get("config", {})
    stages: dict[str, dict] = m.get("stages", {})
    roles = m.get("roles", {})
    rows = snap.rows()
    out = ["---", yaml.safe_dump(front_matter(snap, data_files), sort_keys=False).rstrip(), "---", ""]
    out.append(f"# {pretty_name(snap)}\n")
    corpus = cfg.get("corpus", {})
    out.append(
        "Fine-tuning data made by ragtune following RAG-Tuned-LLM "
        "(Wei et al., arXiv 2503.16071): questions about a private corpus answered the way RAG and "
        "GraphRAG would answer them, for teaching a small model that corpus as memory.\n"
    )
    out.append(
        f"- **Corpus**: `{_shown(corpus.get('path'))}` ({corpus.get('format', 'auto')}): "
        f"{snap.documents:,} documents, {snap.corpus_chars:,} characters after normalization and dedup\n"
        f"- **Teacher**: {_role(roles.get('teacher'))}\n"
        f"- **Judge**: {_role(roles.get('judge'))}\n"
        f"- **Chunks**: {cfg.get('chunking', {}).get('size')} tokens, "
        f"{cfg.get('chunking', {}).get('overlap')} overlap; retriever "
        f"{cfg.get('synth', {}).get('retriever')} top-{cfg.get('synth', {}).get('top_k')}\n"
        f"- **Config hash** `{m.get('config_hash')}`, ragtune {m.get('packages', {}).get('ragtune', m.get('ragtune_version'))}; "
        "everything else in `manifest.json`\n"
    )

    out.append("## Tables\n")
    out.append(_table(
        ["config", "split", "rows", "what"],
        [[t, s, n, schemas.TABLES[t].description] for t, splits in rows.items() for s, n in _splits(splits)],
    ))
    if snap.kinds:
        splits = sorted({s for c in snap.kinds.values() for s in c}, key=_split_key)
        out.append("\n## QA rows per kind and split\n")
        out.append(_table(["kind", *splits], [[k, *(c.get(s, 0) for s in splits)] for k, c in sorted(snap.kinds.items())]))

    out.append("\n## Stages\n")
    out.append(_table(
        ["stage", "rows in", "rows out", "seconds"],
        [[name, e.get("rows_in"), e.get("rows_out"), e.get("seconds")] for name, e in stages.items()],
    ))
    out.append("\n## Token usage\n")
    out.append(_table(
        ["stage", "engine/model", "calls", "input tokens", "output tokens"],
        [[name, em, t.get("calls"), t.get("input"), t.get("output")]
         for name, e in stages.items() for em, t in sorted((e.get("tokens") or {}).items())],
    ))
    out.append("\n## Rows dropped, by reason\n")
    out.append(_table(
        ["stage", "reason", "rows"],
        [[name, reason, n] for name, e in stages.items() for reason, n in sorted((e.get("drops") or {}).items())],
    ))
    out.append("\n## Retrieval\n")
    out.append(_table(["stage", "statistic", "value"], _recall_stats(stages)))
    if m.get("quality"):
        out += _quality_section(m["quality"], figures or {})

    if snap.samples:
        out.append("\n## Sample rows\n")
        for row in snap.samples:
            answer = row["answer"] if len(row["answer"]) <= SAMPLE_CHARS else row["answer"][:SAMPLE_CHARS] + " …"
            out.append(f"**{row['kind']}** — {row['question']}\n")
            out.append("> " + answer.strip().replace("\n", "\n> ") + "\n")

    out.append("\n## How to load\n")
    out.append(_load_section(where, data_files))
    out.append(
        "\nThe `messages` column (system / user / assistant) feeds chat SFT directly, e.g. TRL's "
        "`SFTTrainer(train_dataset=qa[\"train\"])`. Lineage columns (`evidence_chunk_ids`, "
        "`entity_ids`, `community_ids`) join to the graph configs by `id`.\n"
    )
    output = cfg.get("output", {})
    out.append(
        f"\n## Files\n\nHub-style Parquet shards (`<config>/<split>-NNNNN-of-NNNNN[-<sha256>].parquet`), "
        f"zstd, row groups of {output.get('row_group_rows')} rows, at most {output.get('rows_per_shard')} "
        "rows per shard. Schemas and versions: "
        f"`{json.dumps({t: v for t, v in m.get('schema_versions', {}).items() if t in rows}, sort_keys=True)}`.\n"
    )
    return "\n".join(out)


def write_card(run: Run, snap: Snapshot | None = None) -> Snapshot:
    """Validate `run` and write its README.md (and quality plots) in place: the run folder becomes a loadable dataset."""
    snap = snap or snapshot(run)
    paths = snap.figure_paths(published=False)
    for name, png in snap.figures.items():
        run.write_bytes(paths[name], png)
    run.write_bytes("README.md", render(snap, snap.data_files(published=False), run.root, paths).encode())
    return snap
