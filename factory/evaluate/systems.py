"""The systems under evaluation and how each one answers a held-out question.

    student       base model + LoRA adapter, the question alone (memory is in the weights)
    base          the base model, the question alone
    naive_rag     the base model + the chunks retrieved for the question (BM25 candidates reranked
                  by the shipped MiniLM embedder, top 10 by default)
    long_context  the base model + as much of the corpus as its context holds, in date order
    graph_local   GraphRAG local search: the question's entities, their relationships and text units
    graph_global  map-reduce over community reports, the way synthesis answers global questions
    <name>        answers a user brings (Parquet with id, answer), named in evaluate.answer_files

Every prompt with a context is measured as its engine will see it and cut to fit the window
(`fit.py`); a prompt that cannot fit is that question's failure, never sent. Every LLM answer
goes through the engine layer (Ray, cached per call), so a rerun only sends what is missing.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from factory import prompts
from factory.config import Config, EngineConfig
from factory.engines import enabled
from factory.engines.task import LLMTask
from factory.errors import UserError
from factory.evaluate.fit import Blocks, Fitted, Meter, fit, refit
from factory.evaluate.metrics import final_answer
from factory.pipeline import Run, StageRecord
from factory.storage import check_readable, describe_error, filesystem, is_remote, join

SYSTEMS = ("student", "base", "naive_rag", "long_context", "graph_local", "graph_global")
LLM_SYSTEMS = ("student", "base", "naive_rag", "long_context", "graph_local")
AUTO = "auto"
LONG_CONTEXT_NOTE = " (cut to fit the model's context: the latest entries are missing)"


def finetune_export(cfg: Config) -> str:
    """Where the finetune job described by this config exports its adapter (factory/train/export.py)."""
    return join(cfg.train.output, cfg.train.name, "export", "adapter")


def engine_for(cfg: Config, system: str) -> EngineConfig:
    """evaluate.engines[system] if given; else the student config, with its adapter only for `student`.
    An adapter `auto` is the finetune export of this config, which must exist."""
    if system in cfg.evaluate.engines:
        engine = cfg.evaluate.engines[system]
    elif not enabled(cfg.student):
        raise UserError(f"evaluate: system '{system}' needs an LLM: set student (engine, model, adapter) "
                        f"or evaluate.engines.{system}")
    else:
        engine = cfg.student if system == "student" else cfg.student.model_copy(update={"adapter": None})
    if engine.adapter == AUTO:
        engine = engine.model_copy(update={"adapter": _exported_adapter(cfg)})
    if engine.adapter:
        _check_adapter(engine.adapter, cfg)
    return engine


def _exported_adapter(cfg: Config) -> str:
    path = finetune_export(cfg)
    if not _exists(path, cfg):
        raise UserError(f"student.adapter: auto: no adapter at {path}: run `ragtune finetune --config {cfg._source}` "
                        "first (the same train.output and train.name), or set student.adapter to an adapter folder")
    return path


def _check_adapter(adapter: str, cfg: Config) -> None:
    """A missing adapter folder fails here in one line, not in every answering actor. Only an
    `owner/name` that is no local folder may be a Hub id."""
    hub_like = adapter.count("/") == 1 and not adapter.startswith((".", "/", "~")) and not is_remote(adapter)
    if not hub_like and not _exists(adapter, cfg):
        raise UserError(f"student.adapter: {adapter} does not exist (the finetune job exports to "
                        f"{finetune_export(cfg)}; `student.adapter: auto` finds it)")


def _exists(path: str, cfg: Config) -> bool:
    if not is_remote(path):
        return Path(path).expanduser().exists()
    fs, fpath = filesystem(path, cfg.s3)
    try:
        return fs.exists(fpath)
    except Exception as exc:  # botocore's zoo: one line naming the path
        raise UserError(describe_error(path, exc)) from None


def check(cfg: Config, system: str) -> None:
    """Config mistakes of one system, found before any model loads."""
    engine = engine_for(cfg, system)
    if system == "long_context" and engine.engine == "openai" and not (
            cfg.evaluate.long_context_tokens or cfg.evaluate.context_window):
        raise UserError("evaluate: long_context with engine 'openai' needs evaluate.context_window "
                        "(the model's context in tokens; the server does not say)")


class AnswerQuestion(LLMTask):
    """A system's prompt -> its free-text answer (tasks eval_answer, eval_benchmark_<system>)."""

    fields = {"answer": pa.string()}
    keep_failed = True
    lineage = False
    prompted = True  # each system builds its own, fitted to its engine's window (Contexts, fit.py)

    def __init__(self, name: str):
        self.name = name

    def parse(self, row: dict, reply: str | None) -> dict:
        return {"answer": reply}


def generate(run: Run, rec: StageRecord, rows: list[dict], engine: EngineConfig, task: str) -> dict[str, dict]:
    """Send rows (id, messages) through the engine layer; id -> reply (answer, error)."""
    return {r["id"]: r for r in AnswerQuestion(task).run_rows(run, rec, rows, engine)}


# ---- contexts ---------------------------------------------------------------------------
class Contexts:
    """Messages per system for a list of questions; tables, retriever, embedder and tokenizers are
    loaded once, when a system first needs them."""

    def __init__(self, cfg: Config, src: Run, rec: StageRecord):
        self.cfg, self.src, self.rec = cfg, src, rec
        self.meters: dict[str, Meter] = {}

    def meter(self, engine: EngineConfig) -> Meter:
        key = engine.model_dump_json()
        if key not in self.meters:
            self.meters[key] = Meter(engine, self.cfg.evaluate)
        return self.meters[key]

    @functools.cached_property
    def embedder(self):
        from factory.synth.retrieval import load_embedder

        return load_embedder()

    @functools.cached_property
    def retriever(self):
        from factory.synth.retrieval import Retriever

        chunks = self.src.read_arrow("chunks")
        if chunks.num_rows == 0:
            raise UserError(f"evaluate: naive_rag and graph_local need the chunks table in {self.src.root}")
        return Retriever.build(chunks, self.cfg.evaluate.naive_rag.retriever)

    def _table(self, name: str, system: str) -> pa.Table:
        table = self.src.read_arrow(name)
        if table.num_rows == 0:
            raise UserError(f"evaluate: {system} needs the {name} table in {self.src.root}")
        return table

    @functools.cached_property
    def system_prompt(self) -> str:
        """The system prompt the student was trained with: the dataset's own (synthesis picks it per voice)."""
        first = self.src.read_arrow("qa", "test", columns=["messages"]).slice(0, 1).to_pylist()
        turns = first[0]["messages"] if first else []
        if turns and turns[0]["role"] == "system":
            return turns[0]["content"]
        return self.cfg.synth.system_prompt or ""

    def messages(self, system: str, questions: list[dict], engine: EngineConfig) -> list[Fitted]:
        if system in ("student", "base"):
            return [Fitted(plain_messages(self.system_prompt, q["question"]), None) for q in questions]
        meter = self.meter(engine)
        build = {"naive_rag": self.naive_rag, "long_context": self.long_context, "graph_local": self.graph_local}
        fitted = build[system](questions, meter)
        cut = [f.packed for f in fitted if f.packed is not None and f.packed.cut_fraction > 0]
        self.rec.stats.setdefault(system, {}).update({
            "counted_with": meter.how, "window": meter.window, "prompts_cut": len(cut),
            "prompts_too_long": sum(f.messages is None for f in fitted)})
        return fitted

    def naive_rag(self, questions: list[dict], meter: Meter) -> list[Fitted]:
        rag = self.cfg.evaluate.naive_rag
        retriever = self.retriever
        texts = [q["question"] for q in questions]
        hits = [[cid for cid, _ in h] for h in retriever.search(texts, max(rag.top_k, rag.candidates if rag.rerank else 0))]
        first = _recall(questions, hits)
        if rag.rerank:
            hits = self._rerank(texts, hits)
        hits = [h[: rag.top_k] for h in hits]
        prompt = prompts.load("eval_rag")
        out = []
        for q, ids in zip(questions, hits):
            blocks = Blocks([f"[{i + 1}] {retriever.label(c)}\n{retriever.text(c)}\n\n" for i, c in enumerate(ids)], meter)
            out.append(fit(meter, _render(prompt, self.system_prompt, q["question"], "(nothing retrieved)"), blocks.pack))
        self.rec.stats["naive_rag"] = {"retriever": rag.retriever, "candidates": rag.candidates if rag.rerank else None,
                                       "reranked": rag.rerank, "top_k": rag.top_k,
                                       "source_chunk_recall": _recall(questions, hits),
                                       "first_stage_recall": first if rag.rerank else None}
        return out

    def _rerank(self, questions: list[str], hits: list[list[str]]) -> list[list[str]]:
        """Candidates ordered by cosine similarity to the question (each chunk embedded once)."""
        ids = list(dict.fromkeys(c for h in hits for c in h))
        if not ids:
            return hits
        enc = functools.partial(self.embedder.encode, normalize_embeddings=True, show_progress_bar=False)
        vectors = dict(zip(ids, enc([self.retriever.text(c) for c in ids])))
        return [sorted(h, key=lambda c, qv=qv: -float(qv @ vectors[c])) for qv, h in zip(enc(questions), hits)]

    def long_context(self, questions: list[dict], meter: Meter) -> list[Fitted]:
        documents = self._table("documents", "long_context")
        docs = sorted(documents.select(["id", "title", "text", "source", "date"]).to_pylist(),
                      key=lambda d: (d["date"] is None, d["date"] or "", d["source"] or "", d["id"]))
        blocks = Blocks([f"## {' '.join(x for x in (d['date'], d['title']) if x)}\n{d['text']}\n\n" for d in docs], meter)
        whole = "".join(blocks.blocks)
        meter = meter.within(self.cfg.evaluate.long_context_tokens)
        prompt = prompts.load("eval_long_context")

        def render(question: str):
            def messages(context: str) -> list[dict]:
                note = "" if context == whole else LONG_CONTEXT_NOTE
                return prompt.messages(system_prompt=self.system_prompt, context=context,
                                       truncation_note=note, question=question)
            return messages

        # One packing for every question, against the longest; a question it does not fit is packed again.
        longest = max(questions, key=lambda q: meter.text(q["question"]))
        first = fit(meter, render(longest["question"]), blocks.pack)
        if first.messages is None:
            return [first] * len(questions)
        self.rec.stats["long_context"] = {**first.packed.stats(), "documents": len(docs)}
        return [refit(meter, render(q["question"])(first.packed.text), render(q["question"]), blocks.pack, first.packed)
                for q in questions]

    def graph_local(self, questions: list[dict], meter: Meter) -> list[Fitted]:
        from factory.evaluate.local_search import LocalSearch

        gl = self.cfg.evaluate.graph_local
        retriever = self.retriever
        search = LocalSearch(self._table("entities", "graph_local"), self.src.read_arrow("relationships"),
                             lambda c: (retriever.label(c), retriever.text(c)) if retriever.has(c) else None,
                             gl, self.embedder)
        picked = search.pick([q["question"] for q in questions])
        prompt = prompts.load("eval_graph_local")
        out = [fit(meter, _render(prompt, self.system_prompt, q["question"], "(no matching entities)"), search.packer(p, meter),
                   gl.context_tokens) for q, p in zip(questions, picked)]
        named = [len(search.named(q["question"])) for q in questions]
        self.rec.stats["graph_local"] = {"top_entities": gl.top_entities, "context_tokens": gl.context_tokens,
                                         "questions_naming_an_entity": sum(n > 0 for n in named)}
        return out


def _render(prompt: prompts.Prompt, system_prompt: str, question: str, empty: str):
    return lambda context: prompt.messages(system_prompt=system_prompt, context=context or empty,
                                           question=question)


def _recall(questions: list[dict], hits: list[list[str]]) -> float | None:
    """Share of the questions with a source chunk whose source chunk is among their hits."""
    pairs = [(q["source_chunk_id"], h) for q, h in zip(questions, hits) if q.get("source_chunk_id")]
    return round(sum(s in h for s, h in pairs) / len(pairs), 4) if pairs else None


def plain_messages(system_prompt: str, question: str) -> list[dict]:
    """What the student saw in training: the dataset's system prompt and the question."""
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": question}]


def graph_global_answers(cfg: Config, run: Run, src: Run, questions: list[dict], engine: EngineConfig,
                         rec: StageRecord) -> dict[str, dict]:
    """Map-reduce over community reports: synthesis's global answering, reused as is."""
    import ray.data

    from factory.synth.answers import answer_global

    reports = src.read_arrow("community_reports")
    if reports.num_rows == 0:
        raise UserError(f"evaluate: graph_global needs the community_reports table in {src.root}")
    asked = ray.data.from_items([{"id": q["id"], "question": q["question"]} for q in questions])
    out = answer_global(run, rec, asked, reports, engine, level=cfg.synth.global_level,
                        batch_tokens=cfg.synth.map_batch_tokens)
    calls = rec.stats.get("llm", {}).get("global_map", {})
    why = {"no_key_points": f"no_key_points: the map step over the community reports found no key points "
                            f"({calls.get('errors', 0)} of {calls.get('rows', 0)} map calls failed)"}
    return {r["id"]: {"answer": r["answer"], "error": why.get(r["error"], r["error"])}
            for r in out.select_columns(["id", "answer", "error"]).take_all()}


def load_answer_file(name: str, path: str, cfg: Config) -> dict[str, str]:
    fs, fpath = check_readable(path, cfg.s3)
    try:
        with fs.open(fpath, "rb") as f:
            table = pq.read_table(f)
    except Exception as exc:
        raise UserError(f"evaluate.answer_files.{name}: {path}: not a readable Parquet file ({exc})") from None
    missing = [c for c in ("id", "answer") if c not in table.column_names]
    if missing:
        raise UserError(f"evaluate.answer_files.{name}: {path}: missing columns {missing} (need id, answer)")
    return {str(i): a for i, a in zip(table.column("id").to_pylist(), table.column("answer").to_pylist())}


def answer(run: Run, rec: StageRecord, src: Run, cfg: Config, systems: list[str], questions: list[dict]) -> list[dict]:
    """eval_answers rows (without metrics): every system's answer to every question.

    Systems that share one engine config (base, naive_rag, long_context and graph_local by
    default) go through one engine call, so the model is loaded once for them. An answer that
    failed, or came back empty, keeps its reason in `error`.
    """
    replies: dict[str, dict[str, dict]] = {}
    groups: dict[str, tuple[EngineConfig, list[dict]]] = {}
    contexts = Contexts(cfg, src, rec)
    for system in systems:
        if system in cfg.evaluate.answer_files:
            given = load_answer_file(system, cfg.evaluate.answer_files[system], cfg)
            replies[system] = {q["id"]: {"answer": given.get(q["id"]), "error": None if q["id"] in given
                                         else "missing_answer: not in the answer file"} for q in questions}
        elif system == "graph_global":
            replies[system] = graph_global_answers(cfg, run, src, questions, engine_for(cfg, system), rec)
        else:
            engine = engine_for(cfg, system)
            group = groups.setdefault(engine.model_dump_json(), (engine, []))
            for q, f in zip(questions, contexts.messages(system, questions, engine)):
                if f.messages is None:
                    replies.setdefault(system, {})[q["id"]] = {"answer": None, "error": f.error}
                else:
                    group[1].append({"id": f"{system}|{q['id']}", "messages": f.messages})
    for engine, rows in groups.values():
        for key, reply in generate(run, rec, rows, engine, "eval_answer").items():
            system, qid = key.split("|", 1)
            replies.setdefault(system, {})[qid] = reply
    out = []
    for system in systems:
        for q in questions:
            r = replies.get(system, {}).get(q["id"]) or {"error": "no_reply: the engine returned nothing for it"}
            error = r.get("error")
            if error is None and not final_answer(r.get("answer")):
                error = "empty_answer: the reply has no text (reasoning removed)"
            out.append({"question_id": q["id"], "kind": q["kind"], "system": system, "question": q["question"],
                        "answer": r.get("answer"), "reference": q["answer"], "error": error})
    return out
