"""The `reports` stage: one report per community, bottom-up by level, on Ray Data.

Each community's context (its entities, relationships and the passages they
come from) is packed within `graph.report_max_context_tokens`. When the raw
context is over budget, the reports of its sub-communities (written one level
earlier) stand in for their members, largest first, until it fits; what still
does not fit is cut by rank (entity degree, relationship combined degree).

Records are numbered per community (1, 2, ... in context order) and ties in
rank are broken by the records' own content, never by run-wide counters
(`human_readable_id`, community numbers) that shift when documents are added:
a community whose members and their records did not change gets a
byte-identical prompt, so an incremental rerun answers it from the call cache.
The ids a report cites are these per-community record numbers; the report
row lists the cited records' stable ids (entity_ids, relationship_ids,
text_unit_ids). Lineage stays in those columns: no "[Data: Entities (1, 3)]"
note goes into a report's text, which later stages quote in answers, and one
the teacher writes anyway is stripped.

The teacher writes a JSON report from that context (`community_report`
prompt). Without an LLM, or when the teacher's output does not parse, the
report is built by rules: title from the top-degree entities, summary from the
most central sentences of the context (TextRank: PageRank on a sentence
similarity graph), findings from the strongest relationships.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import logging
import math
import re
from collections.abc import Callable

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field, field_validator

import schemas
from factory.cluster import block_count
from factory.engines.task import LLMTask
from factory.text import CHARS_PER_TOKEN, estimate_tokens, norm_key, plain_sentences, words
from factory.pipeline import Run, StageRecord

logger = logging.getLogger(__name__)

_SOURCE_TOKENS = 300  # each passage in a context is cut to about this many tokens
_SUMMARY_SENTENCES = 3
_MAX_POOL = 80  # sentences TextRank ranks per community (its cost is pairwise)
_RAY_PASS_ROWS = 256  # communities in a pass below which it runs on the driver (a few ms of work each)
# A citation note in a report's text ("[Data: Entities (2, 3); Relationships (1)]").
_CITATION = re.compile(r"\s*\[\s*(?:Data|Entities|Relationships|Sources|Reports)\b[^\]]*\]", re.IGNORECASE)


class Finding(BaseModel):
    summary: str
    explanation: str = ""
    entity_ids: list[int] = Field(default_factory=list)
    relationship_ids: list[int] = Field(default_factory=list)
    source_ids: list[int] = Field(default_factory=list)


class CommunityReport(BaseModel):
    title: str
    summary: str
    rating: float = Field(ge=0, le=10)
    rating_explanation: str = ""
    findings: list[Finding] = Field(min_length=1)

    @field_validator("findings")
    @classmethod
    def _at_most_ten(cls, v: list[Finding]) -> list[Finding]:
        return v[:10]


class WriteReport(LLMTask):
    """A community's packed context -> the teacher's report (JSON); a failed one falls back to the rule report."""

    name = "community_report"
    output_model = CommunityReport
    fields = {"report": pa.string()}
    keep_failed = True
    prompted = True  # `prepare` packs the context where the graph index lives

    def parse(self, row: dict, reply: CommunityReport) -> dict:
        return {"report": reply.model_dump_json()}


# ---- the graph as seen by workers -------------------------------------------------------
class _Index:
    """Lookups over the graph tables, built once per stage and shared by its tasks."""

    def __init__(self, entities: pa.Table, relationships: pa.Table, chunks: pa.Table, communities: pa.Table | None = None):
        self.community = {c["community"]: c for c in communities.to_pylist()} if communities is not None else {}
        self.ent = {r["id"]: r for r in entities.to_pylist()}
        self.rel = {r["id"]: r for r in relationships.to_pylist()}
        self.text = dict(zip(chunks.column("id").to_pylist(), chunks.column("text").to_pylist()))
        self.n_units = len(self.text)
        # Record lines without their numbers, built once: every context numbers its own.
        self.body = {**{i: _entity_body(e) for i, e in self.ent.items()}, **{i: _rel_body(r) for i, r in self.rel.items()}}
        self._passages: dict[str, str] = {}

    def passage(self, unit: str) -> str:
        """A chunk's text as contexts quote it (cut to _SOURCE_TOKENS); many communities quote the same chunk."""
        if unit not in self._passages:
            self._passages[unit] = _cut(self.text[unit], _SOURCE_TOKENS)
        return self._passages[unit]


# ---- context packing ----------------------------------------------------------------------
def _entity_body(e: dict) -> str:
    return f"{e['title']}|{e['type'] or ''}|{_flat(e['description'])}|{e['degree']}"


def _rel_body(r: dict) -> str:
    return f"{r['source']}|{r['target']}|{_flat(r['description'])}|{r['weight']:g}"


def _entity_line(n: int, e: dict) -> str:
    return f"{n}|{_entity_body(e)}"


def _rel_line(n: int, r: dict) -> str:
    return f"{n}|{_rel_body(r)}"


def _report_line(n: int, c: dict) -> str:
    return f"{n}|{_flat(c['title'])}|{_flat(c['summary'])}"


def _numbered(line: Callable[[int, dict], str], records: list[dict]) -> list[str]:
    """`line(n, record)` for each record, numbered 1, 2, ... (per community, see the module docstring)."""
    return [line(n, x) for n, x in enumerate(records, 1)]


def _flat(text: str | None) -> str:
    return " ".join((text or "").split())


def _fit(costs: list[int], budget: int) -> tuple[int, int]:
    """How many of the leading lines of these costs fit `budget`, and the tokens they take."""
    used = 0
    for k, cost in enumerate(costs):
        if used + cost > budget:
            return k, used
        used += cost
    return len(costs), used


def _line_costs(lengths: np.ndarray) -> np.ndarray:
    """Tokens (estimate_tokens + 1) of the numbered lines f"{n}|{body}" (n = 1, 2, ...) for bodies of these lengths."""
    n = np.arange(1, len(lengths) + 1)
    digits = 1 + sum((n >= 10 ** k).astype(np.int64) for k in range(1, 7))
    return (digits + 1 + lengths + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN + 1


def pack_context(community: dict, idx: _Index, budget: int, children: list[dict] = ()) -> dict:
    """The records of one community that fit `budget` tokens (see the module docstring).

    `children`: the reports of its sub-communities written so far (id, size, entity_ids,
    relationship_ids, title, summary). `over_budget` in the result says the records alone did not fit.
    """
    # Ties broken as merge numbers records (frequency then name; weight then id), from the records themselves.
    ents = sorted((idx.ent[i] for i in community["entity_ids"] if i in idx.ent),
                  key=lambda e: (-e["degree"], -e["frequency"], norm_key(e["title"]), e["id"]))
    rels = sorted((idx.rel[i] for i in community["relationship_ids"] if i in idx.rel),
                  key=lambda r: (-r["combined_degree"], -r["weight"], r["id"]))
    # A child's `id` hashes its level and members: stable where its community number is not.
    children = sorted(children, key=lambda c: (-c["size"], c["id"]))
    used_reports: list[dict] = []
    # Records still in the context (masks over ents and rels) and their lines' lengths without numbers.
    kept = [np.ones(len(xs), dtype=bool) for xs in (ents, rels)]
    lengths = [np.array([len(idx.body[x["id"]]) for x in xs], dtype=np.int64) for xs in (ents, rels)]
    position = [{x["id"]: k for k, x in enumerate(xs)} for xs in (ents, rels)]

    def local_cost() -> int:
        return int(sum(_line_costs(length[mask]).sum() for length, mask in zip(lengths, kept)))

    cost_now = local_cost()
    over_budget = cost_now > budget
    for child in children:
        if cost_now <= budget:
            break
        # The child's report replaces its members and the relationships inside it.
        for ids, where, mask in zip((child["entity_ids"], child["relationship_ids"]), position, kept):
            mask[[where[i] for i in ids if i in where]] = False
        used_reports.append(child)
        cost_now = local_cost()
    ents = [e for e, k in zip(ents, kept[0]) if k]
    rels = [r for r, k in zip(rels, kept[1]) if k]
    n_reports, cost = _fit([estimate_tokens(line) + 1 for line in _numbered(_report_line, used_reports)], budget)
    used_reports = used_reports[:n_reports]
    left = budget - cost
    n_ents, cost_e = _fit(_line_costs(lengths[0][kept[0]]).tolist(), left // 2 if cost_now > left else left)
    n_rels, cost_r = _fit(_line_costs(lengths[1][kept[1]]).tolist(), left - cost_e)
    ents, rels = ents[:n_ents], rels[:n_rels]
    left -= cost_e + cost_r
    # Passages that mention the most of the kept entities first.
    votes: dict[str, int] = {}
    for e in ents:
        for u in e["text_unit_ids"] or []:
            votes[u] = votes.get(u, 0) + 1
    position = {u: i for i, u in enumerate(community["text_unit_ids"])}
    order = sorted((u for u in votes if u in idx.text), key=lambda u: (-votes[u], position.get(u, 0)))
    sources = []
    for u in order:
        text = idx.passage(u)
        cost = estimate_tokens(text) + 8
        if cost > left:
            break
        sources.append((u, text))
        left -= cost
    return {"entities": ents, "relationships": rels, "reports": used_reports, "sources": sources,
            "tokens": budget - left, "substituted": len(used_reports), "over_budget": over_budget}


def _cut(text: str, tokens: int) -> str:
    """The start of a passage within `tokens`; its lines stay lines, so a heading never runs into a sentence."""
    text = "\n".join(" ".join(line.split()) for line in (text or "").splitlines() if line.strip())
    return text if estimate_tokens(text) <= tokens else text[: tokens * CHARS_PER_TOKEN].rsplit(" ", 1)[0] + " ..."


def _uncited(text: str | None) -> str:
    """`text` without citation notes."""
    return _CITATION.sub("", text or "").strip()


def render_context(ctx: dict) -> str:
    parts = []
    if ctx["reports"]:
        parts.append("-----Sub-community reports-----\nid|title|summary")
        parts.extend(_numbered(_report_line, ctx["reports"]))
    parts.append("-----Entities-----\nid|entity|type|description|degree")
    parts.extend(_numbered(_entity_line, ctx["entities"]))
    parts.append("-----Relationships-----\nid|source|target|description|weight")
    parts.extend(_numbered(_rel_line, ctx["relationships"]))
    if ctx["sources"]:
        parts.append("-----Sources-----\nid|text")
        parts.extend(f"{i}|{_flat(text)}" for i, (_, text) in enumerate(ctx["sources"], 1))
    return "\n".join(parts)


# ---- the rule-based report ----------------------------------------------------------------
def textrank(sents: list[str], k: int, damping: float = 0.85, iterations: int = 50) -> list[str]:
    """The `k` most central sentences, in their original order.

    TextRank: PageRank over sentences, edges weighted by shared words over the
    sum of the log lengths; done with numpy because networkx's per-edge Python
    cost made it most of the reports stage on a 1M-token corpus.
    """
    sent_words = [set(words(s)) for s in sents]
    vocab = {w: i for i, w in enumerate(sorted(set().union(*sent_words)))} if sent_words else {}
    x = np.zeros((len(sents), max(len(vocab), 1)))
    for i, ws in enumerate(sent_words):
        x[i, [vocab[w] for w in ws]] = 1.0
    lens = x.sum(axis=1)
    logs = np.log(np.maximum(lens, 1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = np.nan_to_num((x @ x.T) / (logs[:, None] + logs[None, :]), posinf=0.0)
    np.fill_diagonal(sim, 0.0)
    sim[(lens <= 1), :] = sim[:, (lens <= 1)] = 0.0
    out = sim.sum(axis=1, keepdims=True)
    # Rows with no similar sentence jump anywhere (the usual dangling-node rule).
    trans = np.where(out > 0, sim / np.where(out > 0, out, 1.0), 1.0 / len(sents))
    rank = np.full(len(sents), 1.0 / len(sents))
    for _ in range(iterations):
        rank = (1 - damping) / len(sents) + damping * rank @ trans
    best = sorted(range(len(sents)), key=lambda i: (-rank[i], i))[:k]
    return [sents[i] for i in sorted(best)]


def rule_report(ctx: dict, community: dict, n_units: int) -> dict:
    ents, rels = ctx["entities"], ctx["relationships"]
    names = [e["title"] for e in ents[:3]] or [c["title"] for c in ctx["reports"][:3]]
    if not names:
        title = f"Community {community['community']}"
    else:
        title = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    low_names = [e["title"].lower() for e in ents]
    sents = list(dict.fromkeys(itertools.chain.from_iterable(_passage_sentences(text) for _, text in ctx["sources"])))
    named = [(s, n) for s, n in zip(sents, _name_counts(sents, low_names)) if n]
    # Cheap pre-ranking keeps TextRank's pairwise cost bounded: sentences naming more members first.
    pool = [s for s, _ in sorted(named, key=lambda sn: -sn[1])[:_MAX_POOL]]
    pool += [s for c in ctx["reports"] for s in plain_sentences(c["summary"])]
    summary = " ".join(textrank(pool, _SUMMARY_SENTENCES)) if pool else (
        "; ".join(f"{e['title']}: {_first_line(e['description'])}" for e in ents[:3]))
    src_num = {u: i for i, (u, _) in enumerate(ctx["sources"], 1)}
    ent_num, rel_num = ({x["id"]: n for n, x in enumerate(xs, 1)} for xs in (ents, rels))
    findings = []
    for r in sorted(rels, key=lambda r: (-r["weight"], r["id"]))[:10]:
        ends = [e for e in ents if e["title"] in (r["source"], r["target"])]
        findings.append({
            "summary": f"{r['source']} and {r['target']}",
            "explanation": _first_line(r["description"], 3),
            "entity_ids": [ent_num[e["id"]] for e in ends],
            "relationship_ids": [rel_num[r["id"]]],
            "source_ids": [src_num[u] for u in r["text_unit_ids"] or [] if u in src_num][:5],
        })
    for e in ents:
        if len(findings) >= 5:
            break
        findings.append({
            "summary": f"{e['title']} ({e['type'] or 'entity'})",
            "explanation": _first_line(e["description"], 3),
            "entity_ids": [ent_num[e["id"]]], "relationship_ids": [],
            "source_ids": [src_num[u] for u in e["text_unit_ids"] or [] if u in src_num][:5],
        })
    units = len(community["text_unit_ids"])
    rating = round(10 * math.log1p(units) / math.log1p(max(n_units, 1)), 1)
    return {
        "title": title, "summary": summary, "rating": rating,
        "rating_explanation": f"Rule-based: appears in {units} of {n_units} passages, with {community['size']} "
                              f"entities and {len(community['relationship_ids'])} relationships.",
        "findings": findings,
    }


def _name_counts(texts: list[str], names: list[str]) -> list[int]:
    """For each text, how many of `names` (lower case) occur in it, case-insensitively (as substrings).

    One str.find scan per name over the texts joined, not every name tested against every text.
    """
    if not texts:
        return []
    joined = "\n".join(texts).lower()
    if len(joined) != sum(map(len, texts)) + len(texts) - 1:  # a letter whose lower case is longer ("İ")
        texts = [t.lower() for t in texts]
        joined = "\n".join(texts)
    starts = list(itertools.accumulate((len(t) + 1 for t in texts[:-1]), initial=0))
    counts = [0] * len(texts)
    for name in {n for n in names if "\n" not in n}:  # texts are single lines: such a name is in none
        at = joined.find(name)
        while at != -1:
            k = bisect.bisect_right(starts, at) - 1
            counts[k] += 1
            at = joined.find(name, starts[k + 1]) if k + 1 < len(texts) else -1  # once per text
    return counts


# A passage's sentences, split once: the same chunks are quoted by many communities.
_passage_sentences = functools.lru_cache(maxsize=65536)(plain_sentences)


def _first_line(text: str | None, n: int = 1) -> str:
    return " ".join((text or "").split("\n")[:n]).strip()


# ---- per-community work (Ray) -------------------------------------------------------------
def prepare(batch: pa.Table, graph: list, budget: int, llm: bool) -> pa.Table:
    """Pack each community's context; attach the rule report (the fallback) and, with an LLM, the prompt.

    `children_reports` is null on the first pass, when no sub-community report
    exists yet: a community whose records overflow the budget is then
    `deferred` until its children's reports are written (they would stand in
    for their members). Otherwise it maps child community -> {title, summary}.
    """
    import ray

    idx = ray.get(graph[0])
    rows = [_prepare_one(idx.community[n], reports, idx, budget, llm)
            for n, reports in zip(batch.column("community").to_pylist(), batch.column("children_reports").to_pylist())]
    return pa.Table.from_pylist(rows)


def _prepare_one(row: dict, reports: str | None, idx: _Index, budget: int, llm: bool) -> dict:
    written = json.loads(reports) if reports else {}
    children = [{**{f: idx.community[k][f] for f in ("id", "size", "entity_ids", "relationship_ids")}, **written[str(k)]}
                for k in row["children"] or [] if str(k) in written]
    ctx = pack_context(row, idx, budget, children)
    out = {"id": str(row["community"]), "community": row["community"], "deferred": False, "rule_report": "", "refs": "",
           "context_tokens": ctx["tokens"], "substituted": ctx["substituted"]}
    if reports is None and ctx["over_budget"] and row["children"]:
        return {**out, "deferred": True, **({"messages": None} if llm else {})}
    out["rule_report"] = json.dumps(rule_report(ctx, row, idx.n_units))
    out["refs"] = json.dumps({
        "e": {n: e["id"] for n, e in enumerate(ctx["entities"], 1)},
        "r": {n: r["id"] for n, r in enumerate(ctx["relationships"], 1)},
        "s": {i: u for i, (u, _) in enumerate(ctx["sources"], 1)},
    })
    if llm:
        out["messages"] = WriteReport().messages({"context": render_context(ctx)})
    return out


def finalize(row: dict, community: dict, engine: str, model: str | None, prompt_hash: str | None) -> dict:
    """One `community_reports` row from the teacher's report, or the rule report when it is missing."""
    parsed = row.get("report") if not row.get("error") else None
    rep = json.loads(parsed) if parsed else json.loads(row["rule_report"])
    if not parsed:
        engine, model, prompt_hash = "none", None, None
    refs = json.loads(row["refs"])
    cited = {"e": {}, "r": {}, "s": {}}
    findings = []
    for f in rep["findings"]:
        ids = {k: [refs[k][str(i)] for i in f.get(name) or [] if str(i) in refs[k]]
               for k, name in (("e", "entity_ids"), ("r", "relationship_ids"), ("s", "source_ids"))}
        for k in cited:
            cited[k].update(dict.fromkeys(ids[k]))
        findings.append({"summary": _uncited(f["summary"]), "explanation": _uncited(f["explanation"])})
    title, summary = _uncited(rep["title"]), _uncited(rep["summary"])
    full = "\n\n".join([f"# {title}", summary, *(f"## {f['summary']}\n\n{f['explanation']}" for f in findings)])
    return {
        "id": community["id"], "human_readable_id": community["community"], "community": community["community"],
        "level": community["level"], "title": title, "summary": summary, "full_content": full,
        "rank": float(rep["rating"]), "rating_explanation": _uncited(rep["rating_explanation"]), "findings": findings,
        "size": community["size"], "engine": engine, "model": model, "prompt_hash": prompt_hash,
        "entity_ids": list(cited["e"]), "relationship_ids": list(cited["r"]), "text_unit_ids": list(cited["s"]),
    }


def write_reports(run: Run, rec: StageRecord) -> None:
    """Stage `reports`: communities → community_reports; one pass, then deepest level first for those that wait."""
    import ray

    cfg, teacher = run.cfg.graph, run.cfg.teacher
    communities = run.read_arrow("communities").to_pylist()
    rec.rows_in = len(communities)
    if not communities:
        logger.info(f"[{rec.name}] no communities (the graph is empty or has no relationships): "
                   "writing an empty community_reports table; global questions will have nothing to draw on")
        rec.stats["empty"] = True
        run.write_table("community_reports", schemas.schema_of("community_reports").empty_table())
        return
    llm = teacher.enabled
    index = _Index(run.read_arrow("entities"), run.read_arrow("relationships"),
                   run.read_arrow("chunks").select(["id", "text"]), run.read_arrow("communities"))
    budget = cfg.report_max_context_tokens
    shared: list = []  # the index in the object store, put there once for the first pass on Ray
    by_id = {c["community"]: c for c in communities}
    written: dict[int, dict] = {}  # community -> its report's title and summary
    rows: list[dict] = []
    # First pass: every community at once. Those whose records overflow the budget wait, and are
    # written deepest level first, once their children's reports exist to stand in for members.
    todo: list[tuple[int, str | None]] = [(c["community"], None) for c in communities]
    waiting: list[int] = []
    while todo:
        if len(todo) < _RAY_PASS_ROWS:
            # A pass this small (the waiting ones of a level) costs less here than a Ray pass's start
            # and the index's unpickling in its tasks.
            prepared = [_prepare_one(index.community[n], reports, index, budget, llm) for n, reports in todo]
        else:
            shared = shared or [ray.put(index)]  # unpickling costs a task a third of building it
            items = [{"community": n, "children_reports": reports} for n, reports in todo]
            # A block per CPU: every task unpacks the graph's index (~0.2 s of CPU for 13k entities), and
            # from_items' default (up to ~200 tasks) cost more than the work.
            prepared = ray.data.from_items(items, override_num_blocks=block_count(len(items), min_rows=32, per_cpu=1)
                                           ).map_batches(prepare, batch_format="pyarrow",
                                                         fn_kwargs={"graph": shared, "budget": budget, "llm": llm}).take_all()
        waiting += [p["community"] for p in prepared if p["deferred"]]
        ready = [p for p in prepared if not p["deferred"]]
        if llm and ready:
            ready = WriteReport().run_rows(run, rec, ready, teacher)
        for p in ready:
            model = teacher.model if llm else None
            row = finalize(p, by_id[p["community"]], teacher.engine, model, p.get("prompt_hash"))
            if llm and row["engine"] == "none":
                rec.drop("report_fell_back_to_rules")
            rec.stats["context_substitutions"] = rec.stats.get("context_substitutions", 0) + (p["substituted"] > 0)
            written[p["community"]] = {"title": row["title"], "summary": row["summary"]}
            rows.append(row)
        deepest = max((by_id[n]["level"] for n in waiting), default=None)
        todo = [(n, json.dumps({k: written[k] for k in by_id[n]["children"]}, sort_keys=True))
                for n in waiting if by_id[n]["level"] == deepest]
        waiting = [n for n in waiting if by_id[n]["level"] != deepest]
    rows.sort(key=lambda r: r["community"])
    rec.rows_out = run.write_table("community_reports", pa.Table.from_pylist(rows, schema=schemas.schema_of("community_reports")))
