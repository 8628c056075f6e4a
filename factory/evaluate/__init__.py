"""The evaluate job: the tuned student against base, naive RAG, long-context and
GraphRAG-style answering on the held-out `test` split, judged pairwise in both orders.

Four stages run in the eval folder (default `<run>/eval`), each resumable like
generate's stages (markers + the per-call LLM cache):

    answer     every system answers every question -> eval_answers/test (+ judge-free metrics)
    judge      every pair, both orders, per criterion -> eval_judgments/test
    benchmark  the user's benchmark file, base and student -> eval_answers/benchmark
    report     eval_results/test, results.parquet, report.md, report.html, plots/, config.yaml
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pyarrow as pa

import schemas
from factory.config import Config, EngineConfig
from factory.engines import enabled
from factory.errors import UserError
from factory.evaluate import benchmark, judge, metrics, report, systems
from factory.pipeline import Run, Stage, StageRecord, plan, run_stages
from factory.storage import check_readable, filesystem, join


def source_root(cfg: Config) -> str:
    return cfg.evaluate.run or cfg.output.path


def output_root(cfg: Config) -> str:
    return cfg.evaluate.output or join(source_root(cfg), "eval")


# qa columns evaluate reads when the table has them (older and newer datasets differ).
OPTIONAL_COLUMNS = ("source_chunk_id", "evidence_chunk_ids", "community_ids", "question_set")


def select_questions(qa: pa.Table, limit: int | None) -> list[dict]:
    """Questions in id order; with a limit, taken round-robin across question sets and kinds so every
    one is represented."""
    cols = ["id", "kind", "question", "answer"] + [c for c in OPTIONAL_COLUMNS if c in qa.column_names]
    rows = sorted(qa.select(cols).to_pylist(), key=lambda r: r["id"])
    if not limit or limit >= len(rows):
        return rows
    by_kind: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by_kind[(r.get("question_set") or "", r["kind"])].append(r)
    queues = [by_kind[k] for k in sorted(by_kind)]
    picked: list[dict] = []
    while len(picked) < limit:
        for q in queues:
            if q and len(picked) < limit:
                picked.append(q.pop(0))
    return sorted(picked, key=lambda r: r["id"])


def question_sets(questions: list[dict]) -> dict[str, str]:
    """question id -> question set, when the test split has more than one (else results need no set groups)."""
    sets = {q["id"]: q.get("question_set") or "main" for q in questions}
    return sets if len(set(sets.values())) > 1 else {}


def _listing(fs, paths: list[str]) -> str:
    """Fingerprint material for input files: path, size and version."""
    out = []
    for p in paths:
        info = fs.info(p)
        out.append([p, info.get("size"), str(info.get("ETag") or info.get("mtime") or info.get("LastModified"))])
    return json.dumps(out)


def _write(run: Run, name: str, rows: list[dict], split: str) -> int:
    return run.write_table(name, pa.Table.from_pylist(rows, schema=schemas.schema_of(name)), split)


# The evaluate settings each stage depends on (the report depends on all of them).
ANSWER_FIELDS = ("run", "systems", "answer_files", "engines", "max_questions", "long_context_tokens",
                 "context_window", "estimate_margin", "naive_rag", "graph_local")
JUDGE_FIELDS = ("systems", "answer_files", "criteria", "graphrag_criteria", "anchor", "all_pairs",
                "judge_reference", "judge_evidence", "judge_evidence_tokens")
BENCHMARK_FIELDS = ("benchmark_file", "benchmark_max_items")
JUDGE_HINT = " (start the judge or point judge.base_url at it; --set judge.engine=none evaluates without a judge)"


class Evaluation:
    """The stages of one evaluation, bound to its source run and config."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.src = Run(cfg, root=source_root(cfg), read_only=True)
        self.systems = list(dict.fromkeys([*cfg.evaluate.systems, *cfg.evaluate.answer_files]))
        self.judged = enabled(cfg.judge)
        # Config mistakes fail here, in one line, before any model is loaded.
        self.criteria = judge.criteria_of(cfg.evaluate.criteria, cfg.evaluate.graphrag_criteria)
        for system in self.systems:
            if system not in cfg.evaluate.answer_files:
                if system not in systems.SYSTEMS:
                    raise UserError(f"evaluate.systems: unknown system '{system}' (known: {', '.join(systems.SYSTEMS)} "
                                    "or a name in evaluate.answer_files)")
                systems.check(cfg, system)
        self.questions = select_questions(self.src.read_arrow("qa", "test"), cfg.evaluate.max_questions)
        if not self.questions:
            raise UserError(f"evaluate: {self.src.root} has no qa test split (run generate with synth.test_fraction > 0)")
        self.sets = question_sets(self.questions)

    def stages(self) -> list[Stage]:
        return [
            Stage("answer", self.answer, sections=("student", "synth"),
                  fingerprint_extra=lambda run: self._fields(ANSWER_FIELDS) + self._inputs(run)),
            Stage("judge", self.judge, sections=("judge",), inputs=("answer",),
                  fingerprint_extra=lambda run: self._fields(JUDGE_FIELDS)),
            Stage("benchmark", self.benchmark, sections=("student",),
                  fingerprint_extra=lambda run: self._fields(BENCHMARK_FIELDS) + self._bench_input(run)),
            Stage("report", self.report, sections=("evaluate", "judge"), inputs=("answer", "judge", "benchmark")),
        ]

    def _fields(self, names: tuple[str, ...]) -> str:
        """The evaluate settings a stage depends on: a changed criterion or benchmark file must not re-answer."""
        ev = self.cfg.public_dict()["evaluate"]
        return json.dumps({k: ev[k] for k in names}, sort_keys=True, default=str)

    def preflight(self, run: Run, force: bool) -> None:
        """Every engine the stages about to run will call, checked before Ray starts, as generate does."""
        from factory.engines.base import backend
        todo = {step.stage.name for step in plan(run, self.stages(), force) if step.runs}
        calls: list[tuple[str, EngineConfig]] = []
        if "answer" in todo:
            calls += [(s, systems.engine_for(self.cfg, s)) for s in self.systems if s in systems.SYSTEMS]
        if "benchmark" in todo and self.cfg.evaluate.benchmark_file:
            calls += [(s, systems.engine_for(self.cfg, s)) for s in benchmark.SYSTEMS]
        if "judge" in todo and self.judged:
            calls.append(("judge", self.cfg.judge))
        checked: set[str] = set()
        for who, engine in calls:
            if engine.model_dump_json() in checked or not enabled(engine):
                continue
            try:
                backend(engine.engine).preflight(engine)
            except UserError as exc:
                raise UserError(f"evaluate: {who}: {exc}{JUDGE_HINT if who == 'judge' else ''}") from None
            checked.add(engine.model_dump_json())

    def _inputs(self, run: Run) -> str:
        tables = ("qa", "documents", "chunks", "entities", "relationships", "community_reports")
        files = [f for t in tables for f in self.src.table_files(t)]
        return _listing(self.src.fs, files) + self._adapter() + "".join(
            self._file_listing(p) for p in self.cfg.evaluate.answer_files.values())

    def _bench_input(self, run: Run) -> str:
        if not self.cfg.evaluate.benchmark_file:
            return ""
        return self._file_listing(self.cfg.evaluate.benchmark_file) + self._adapter()

    def _adapter(self) -> str:
        """The adapter's files: a student retrained into the same folder must not look up to date."""
        if "student" not in self.systems and not self.cfg.evaluate.benchmark_file:
            return ""
        adapter = systems.engine_for(self.cfg, "student").adapter
        fs, path = filesystem(adapter, self.cfg.s3) if adapter else (None, "")
        return _listing(fs, sorted(fs.find(path))) if adapter and fs.exists(path) else ""

    def _file_listing(self, path: str) -> str:
        fs, fpath = check_readable(path, self.cfg.s3)
        return _listing(fs, [fpath])

    # ---- stages -----------------------------------------------------------------------
    def answer(self, run: Run, rec: StageRecord) -> None:
        rows = [metrics.score(r) for r in systems.answer(run, rec, self.src, self.cfg, self.systems, self.questions)]
        failed = Counter(r["error"].split(":", 1)[0] for r in rows if r["error"] is not None)
        rec.rows_in, rec.rows_out = len(self.questions), len(rows) - sum(failed.values())
        for reason, n in failed.items():
            rec.drop(f"answer_{reason}", n)
        rec.stats["engines"] = {s: self.engine_summary(s) for s in self.systems}
        _write(run, "eval_answers", rows, "test")

    def engine_summary(self, system: str) -> dict:
        if system in self.cfg.evaluate.answer_files:
            return {"engine": "file", "path": self.cfg.evaluate.answer_files[system]}
        return systems.engine_for(self.cfg, system).model_dump(mode="json")

    def judge(self, run: Run, rec: StageRecord) -> None:
        criteria = self.criteria
        rec.stats["criteria"] = criteria
        if not self.judged:
            rec.stats["skipped"] = "no judge configured"
            _write(run, "eval_judgments", [], "test")
            return
        ev = self.cfg.evaluate
        answers = run.read_arrow("eval_answers", "test")
        pairs = judge.system_pairs(self.systems, ev.anchor, ev.all_pairs)
        evidence = judge.evidence_texts(self.questions, self.src.read_arrow("chunks", columns=["id", "text"]),
                                        self.src.read_arrow("community_reports"), ev.judge_evidence_tokens) \
            if ev.judge_evidence else {}
        rec.stats["judge_saw"] = {"reference": ev.judge_reference, "evidence": len(evidence)}
        table = judge.judge(run, rec, answers, pairs, criteria, self.cfg.judge, ev.judge_reference, evidence)
        run.write_table("eval_judgments", table, "test")

    def benchmark(self, run: Run, rec: StageRecord) -> None:
        rows = benchmark.run_benchmark(run, rec, self.cfg) if self.cfg.evaluate.benchmark_file else []
        _write(run, "eval_answers", rows, "benchmark")

    def report(self, run: Run, rec: StageRecord) -> None:
        n_boot, seed = self.cfg.evaluate.bootstrap, self.cfg.seed
        answers = run.read_arrow("eval_answers", "test").to_pylist()
        results = metrics.summary(answers, n_boot, seed, self.sets)
        results += judge.win_rates(run.read_arrow("eval_judgments", "test"), n_boot, seed, self.sets)
        results += benchmark.summary(run.read_arrow("eval_answers", "benchmark").to_pylist(), n_boot, seed)
        _write(run, "eval_results", results, "test")
        stats = {**(run.marker("answer") or {}).get("stats", {}), **(run.marker("judge") or {}).get("stats", {})}
        engines = stats.pop("engines", {})
        pairs = judge.system_pairs(self.systems, self.cfg.evaluate.anchor, self.cfg.evaluate.all_pairs)
        secs = report.sections(self.cfg, self.src.root, engines, answers, results, stats, self.judged, pairs)
        report.write_report(run, self.cfg, secs, results)
        rec.rows_out = len(results)


def evaluate(cfg: Config, force: bool = False) -> Run:
    """Run every evaluation stage that is not up to date; returns the eval folder's Run."""
    from factory.cluster import ensure_ray

    evaluation = Evaluation(cfg)  # input errors surface before Ray starts
    run = Run(cfg, root=output_root(cfg))
    evaluation.preflight(run, force)  # and so do unreachable engines and missing model folders
    ensure_ray(cfg)
    run_stages(run, evaluation.stages(), force=force)
    return run
