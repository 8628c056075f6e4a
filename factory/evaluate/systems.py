"""The systems under evaluation and how each one answers a held-out question.

    student       base model + LoRA adapter, the question alone (memory is in the weights)
    base          the base model, the question alone
    naive_rag     the base model + the top-k chunks retrieved for the question
    long_context  the base model + as much of the corpus as its context holds, in date order
    graph_global  map-reduce over community reports, the way synthesis answers global questions
    <name>        answers a user brings (Parquet with id, answer), named in evaluate.answer_files

Every LLM answer goes through the engine layer (Ray, cached per call), so a
rerun only sends what is missing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import pyarrow as pa
import pyarrow.parquet as pq

from factory import prompts
from factory.config import Config, EngineConfig
from factory.errors import UserError
from factory.pipeline import Run, StageRecord, log
from factory.storage import check_readable, filesystem, join
from factory.synth.text import estimate_tokens

SYSTEMS = ("student", "base", "naive_rag", "long_context", "graph_global")
# Tokens kept free around the packed corpus for the prompt template itself.
TEMPLATE_RESERVE = 128


def engine_for(cfg: Config, system: str) -> EngineConfig:
    """evaluate.engines[system] if given; else the student config, with its adapter only for `student`."""
    if system in cfg.evaluate.engines:
        return cfg.evaluate.engines[system]
    if cfg.student is None or cfg.student.engine == "none":
        raise UserError(f"evaluate: system '{system}' needs an LLM: set student (engine, model, adapter) "
                        f"or evaluate.engines.{system}")
    if system == "student":
        if cfg.student.adapter:
            return cfg.student
        exported = join(cfg.train.output, cfg.train.name, "export", "adapter")
        fs, path = filesystem(exported, cfg.s3)
        if fs.exists(path):
            log(f"evaluate: student.adapter not set; using the finetune job's export {exported}")
            return cfg.student.model_copy(update={"adapter": exported})
        log("evaluate: student.adapter is not set and no finetune export exists; 'student' is the plain student model")
        return cfg.student
    return cfg.student.model_copy(update={"adapter": None})


def generate(run: Run, rec: StageRecord, rows: list[dict], engine: EngineConfig, task: str) -> dict[str, dict]:
    """Send rows (id, messages) through the engine layer; id -> reply (generated_text, error, tokens)."""
    import ray.data

    from factory.engines import run_llm

    if not rows:
        return {}
    out = run_llm(run, rec, ray.data.from_items(rows), engine, task)
    cols = ["id", "generated_text", "error", "output_tokens"]
    return {r["id"]: r for r in out.select_columns(cols).take_all()}


# ---- context builders ----------------------------------------------------------------
class TokenCounter:
    """The answering model's tokenizer where it is local (hf, vllm); a 4-chars-per-token estimate otherwise."""

    def __init__(self, engine: EngineConfig):
        self.tokenizer = None
        self.how = "estimate (4 characters per token)"
        if engine.engine in ("hf", "vllm"):
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(engine.model)
            self.how = f"tokenizer of {engine.model}"

    def count(self, text: str) -> int:
        if self.tokenizer is None:
            return estimate_tokens(text)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def head(self, text: str, n: int) -> str:
        """The first n tokens of text."""
        if n <= 0:
            return ""
        if self.tokenizer is None:
            return text[: 4 * n]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][:n]
        return self.tokenizer.decode(ids)


def context_window(engine: EngineConfig) -> int | None:
    if "max_model_len" in engine.engine_kwargs:
        return int(engine.engine_kwargs["max_model_len"])
    if engine.engine in ("hf", "vllm"):
        from transformers import AutoConfig

        return getattr(AutoConfig.from_pretrained(engine.model), "max_position_embeddings", None)
    return None


@dataclass
class Packed:
    """The corpus as packed for long_context, and how much of it was cut."""

    text: str
    budget_tokens: int
    tokens_total: int
    tokens_kept: int
    docs_total: int
    docs_full: int
    docs_partial: int
    counted_with: str

    @property
    def cut_fraction(self) -> float:
        return 1 - self.tokens_kept / self.tokens_total if self.tokens_total else 0.0

    def stats(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "text"}, "cut_fraction": round(self.cut_fraction, 4)}


def pack_corpus(documents: pa.Table, budget: int, counter: TokenCounter) -> Packed:
    """Whole documents by date (then source, id) until the budget is spent; the next one is cut
    at a token boundary and marked; the rest are left out and counted."""
    docs = sorted(documents.select(["id", "title", "text", "source", "date"]).to_pylist(),
                  key=lambda d: (d["date"] is None, d["date"] or "", d["source"] or "", d["id"]))
    parts, kept, total, full, partial = [], 0, 0, 0, 0
    for d in docs:
        block = f"## {' '.join(x for x in (d['date'], d['title']) if x)}\n{d['text']}\n\n"
        n = counter.count(block)
        total += n
        room = budget - kept
        if n <= room:
            parts.append(block)
            kept, full = kept + n, full + 1
        elif room > 32 and not partial:
            head = counter.head(block, room - 16)
            parts.append(head + "\n[... document truncated: the context is full]\n\n")
            kept, partial = kept + counter.count(head), 1
    return Packed("".join(parts), budget, total, kept, len(docs), full, partial, counter.how)


def _long_context_budget(cfg: Config, engine: EngineConfig, counter: TokenCounter, questions: list[str]) -> int:
    limits = [x for x in (cfg.evaluate.long_context_tokens, context_window(engine)) if x]
    if not limits:
        raise UserError(f"evaluate: long_context with engine '{engine.engine}' needs evaluate.long_context_tokens "
                        "(the model's context size is unknown)")
    longest_q = max((counter.count(q) for q in questions), default=0)
    budget = min(limits) - engine.max_tokens - TEMPLATE_RESERVE - counter.count(cfg.synth.system_prompt) - longest_q
    if budget < 64:
        raise UserError(f"evaluate: long_context has only {budget} tokens left for the corpus "
                        f"(context {min(limits)}, max_tokens {engine.max_tokens}); raise the context or lower max_tokens")
    return budget


# ---- per-system messages ---------------------------------------------------------------
def plain_messages(cfg: Config, question: str) -> list[dict]:
    """What the student saw in training: the dataset's system prompt and the question."""
    return [{"role": "system", "content": cfg.synth.system_prompt}, {"role": "user", "content": question}]


def rag_messages(cfg: Config, src: Run, questions: list[dict], rec: StageRecord) -> list[list[dict]]:
    from factory.synth.retrieval import Retriever

    chunks = src.read_arrow("chunks")
    if chunks.num_rows == 0:
        raise UserError(f"evaluate: naive_rag needs the chunks table in {src.root}")
    retriever = Retriever.build(chunks, cfg.synth.retriever)
    hits = retriever.search([q["question"] for q in questions], cfg.synth.top_k)
    prompt = prompts.load("eval_rag")
    found = wanted = 0
    out = []
    for q, qhits in zip(questions, hits):
        ids = [cid for cid, _ in qhits]
        if q.get("source_chunk_id"):
            wanted += 1
            found += q["source_chunk_id"] in ids
        context = "\n\n".join(f"[{i + 1}] {retriever.label(c)}\n{retriever.text(c)}" for i, c in enumerate(ids))
        out.append(prompt.messages(system_prompt=cfg.synth.system_prompt, context=context or "(nothing retrieved)",
                                   question=q["question"]))
    rec.stats["naive_rag"] = {"retriever": cfg.synth.retriever, "top_k": cfg.synth.top_k,
                              "source_chunk_recall": round(found / wanted, 4) if wanted else None}
    return out


def long_context_messages(cfg: Config, src: Run, questions: list[dict], engine: EngineConfig,
                          rec: StageRecord) -> list[list[dict]]:
    documents = src.read_arrow("documents")
    if documents.num_rows == 0:
        raise UserError(f"evaluate: long_context needs the documents table in {src.root}")
    counter = TokenCounter(engine)
    packed = pack_corpus(documents, _long_context_budget(cfg, engine, counter, [q["question"] for q in questions]),
                         counter)
    rec.stats["long_context"] = packed.stats()
    note = (f" (cut to {packed.tokens_kept} of {packed.tokens_total} tokens: the latest entries are missing)"
            if packed.cut_fraction > 0 else "")
    prompt = prompts.load("eval_long_context")
    return [prompt.messages(system_prompt=cfg.synth.system_prompt, context=packed.text, truncation_note=note,
                            question=q["question"]) for q in questions]


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
    return {r["id"]: {"generated_text": r["answer"], "error": r["error"]}
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


def _messages(cfg: Config, src: Run, system: str, questions: list[dict], engine: EngineConfig,
              rec: StageRecord) -> list[list[dict]]:
    if system in ("student", "base"):
        return [plain_messages(cfg, q["question"]) for q in questions]
    if system == "naive_rag":
        return rag_messages(cfg, src, questions, rec)
    return long_context_messages(cfg, src, questions, engine, rec)


def answer(run: Run, rec: StageRecord, src: Run, cfg: Config, systems: list[str], questions: list[dict]) -> list[dict]:
    """eval_answers rows (without metrics): every system's answer to every question.

    Systems that share one engine config (base, naive_rag and long_context by
    default) go through one engine call, so the model is loaded once for them.
    """
    replies: dict[str, dict[str, dict]] = {}
    groups: dict[str, tuple[EngineConfig, list[dict]]] = {}
    for system in systems:
        if system in cfg.evaluate.answer_files:
            given = load_answer_file(system, cfg.evaluate.answer_files[system], cfg)
            replies[system] = {q["id"]: {"generated_text": given.get(q["id"]), "error": None if q["id"] in given
                                         else "missing from the answer file"} for q in questions}
        elif system == "graph_global":
            replies[system] = graph_global_answers(cfg, run, src, questions, engine_for(cfg, system), rec)
        else:
            engine = engine_for(cfg, system)
            msgs = _messages(cfg, src, system, questions, engine, rec)
            group = groups.setdefault(engine.model_dump_json(), (engine, []))
            group[1].extend({"id": f"{system}|{q['id']}", "messages": m} for q, m in zip(questions, msgs))
    for engine, rows in groups.values():
        for key, reply in generate(run, rec, rows, engine, "eval_answer").items():
            system, qid = key.split("|", 1)
            replies.setdefault(system, {})[qid] = reply
    out = []
    for system in systems:
        for q in questions:
            r = replies.get(system, {}).get(q["id"]) or {"error": "no reply"}
            out.append({"question_id": q["id"], "kind": q["kind"], "system": system, "question": q["question"],
                        "answer": r.get("generated_text"), "reference": q["answer"], "error": r.get("error")})
    return out
