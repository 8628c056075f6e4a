"""Evaluation pieces that need no LLM: metrics, both-order logic, intervals, prompts that fit, local search,
benchmark scoring, report."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from factory.config import EngineConfig, EvaluateConfig, validate_config
from factory.errors import UserError
from factory.evaluate import benchmark, judge, metrics, question_sets, report, select_questions
from factory.evaluate.fit import Blocks, Meter, Packed, fit
from factory.evaluate.local_search import LocalSearch
from factory.evaluate.systems import engine_for
from factory.pipeline import Run


# ---- judge-free metrics ----------------------------------------------------------------
def test_token_f1_and_rouge_l():
    assert metrics.token_f1("The cat sat.", "the cat sat") == 1.0
    assert metrics.token_f1("dog", "cat") == 0.0
    # precision 1/2, recall 1/1 -> F1 2/3
    assert metrics.token_f1("cat dog", "cat") == pytest.approx(2 / 3)
    # LCS of [a b c d] and [a c d e] (articles dropped: use plain words) is 3
    assert metrics.rouge_l("w x y z", "w y z v") == pytest.approx(0.75)
    assert metrics.rouge_l("", "") == 1.0 and metrics.rouge_l("x", "") == 0.0


def test_reasoning_is_removed_before_scoring():
    answer = "<think>long musing about herons</think> The heron stands on the rock."
    assert metrics.final_answer(answer) == "The heron stands on the rock."
    row = metrics.score({"answer": answer, "reference": "The heron stands on the rock.", "error": None})
    assert row["token_f1"] == 1.0 and row["n_tokens"] == 6 and row["refused"] is False


def test_refusal_detection():
    assert metrics.is_refusal("I don't know; the journal does not mention a trip to Paris.")
    assert metrics.is_refusal("There is no information about that in my memory.")
    assert not metrics.is_refusal("She ran 8 km in 54 minutes. Nothing else was recorded later that week, "
                                  "and the journal does not mention the weather on Monday.")


def test_bootstrap_interval_covers_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = rng.integers(0, 2, 20).astype(float)
    big = rng.integers(0, 2, 2000).astype(float)
    lo_s, hi_s = metrics.bootstrap_ci(small, 1000, seed=0)
    lo_b, hi_b = metrics.bootstrap_ci(big, 1000, seed=0)
    assert lo_s <= small.mean() <= hi_s and lo_b <= big.mean() <= hi_b
    assert (hi_b - lo_b) < (hi_s - lo_s) / 3
    # a constant sample has a zero-width interval; seeded, so it is reproducible
    assert metrics.bootstrap_ci([1.0] * 10, 200) == (1.0, 1.0)
    assert metrics.bootstrap_ci(small, 500, seed=3) == metrics.bootstrap_ci(small, 500, seed=3)


def test_summary_refusal_accuracy_and_false_refusals():
    rows = [metrics.score({"question_id": str(i), "kind": k, "system": "s", "answer": a, "reference": "x", "error": None})
            for i, (k, a) in enumerate([("unanswerable", "I don't know."), ("unanswerable", "It was Tuesday."),
                                        ("local", "I cannot answer that."), ("local", "Eight km.")])]
    res = {(r["metric"], r["kind"]): r for r in metrics.summary(rows, 200)}
    assert res[("refusal_accuracy", "unanswerable")]["value"] == 0.5
    assert res[("refusal_accuracy", "local")]["value"] == 0.5  # answerable: right when not refused
    assert res[("refusal_accuracy", "all")]["value"] == 0.5 and res[("refusal_accuracy", "all")]["n"] == 4
    assert res[("false_refusal_rate", "all")]["value"] == 0.5 and ("false_refusal_rate", "local") not in res
    assert res[("answer_tokens", "all")]["n"] == 4


def test_reference_recall_and_question_sets():
    assert metrics.reference_recall("Ana ran eight km by the river", "Ana ran eight km") == 1.0
    assert metrics.reference_recall("Ana swam", "Ana ran eight km") == pytest.approx(1 / 4)
    rows = [metrics.score({"question_id": f"q{i}", "kind": "global", "system": "s", "answer": "a b", "reference": "a b",
                           "error": None}) for i in range(3)]
    res = {(r["metric"], r["kind"]) for r in metrics.summary(rows, 100, sets={"q0": "main", "q1": "hard_global"})}
    assert {("token_f1", "set:main"), ("token_f1", "set:hard_global"), ("reference_recall", "all")} <= res


# ---- both orders ---------------------------------------------------------------------------
def test_combine_counts_a_win_only_when_both_orders_agree():
    assert judge.combine("A", "B") == "a"  # a shown first and won; b shown first and lost
    assert judge.combine("B", "A") == "b"
    assert judge.combine("A", "A") == "tie"  # position A always wins: no information
    assert judge.combine("B", "B") == "tie"
    assert judge.combine("A", "tie") == "tie"
    assert judge.combine("tie", "tie") == "tie"


def _judgments(outcomes: list[tuple[str, str, str]]) -> pa.Table:
    rows = [{"question_id": f"q{i}", "kind": kind, "system_a": "student", "system_b": "base", "criterion": "usefulness",
             "winner_ab": w1, "winner_ba": w2, "outcome": judge.combine(w1, w2)}
            for i, (kind, w1, w2) in enumerate(outcomes)]
    return schemas.validate("eval_judgments", pa.Table.from_pylist(rows, schema=schemas.schema_of("eval_judgments")))


def test_win_rates_per_kind_with_intervals():
    table = _judgments([("local", "A", "B")] * 6 + [("global", "A", "A")] * 4)
    res = {(r["metric"], r["kind"]): r for r in judge.win_rates(table, 500)}
    local, glob, every = res[("win_rate", "local")], res[("win_rate", "global")], res[("win_rate", "all")]
    assert (local["wins_a"], local["ties"], local["value"]) == (6, 0, 1.0)
    assert (glob["wins_a"], glob["ties"], glob["value"]) == (0, 4, 0.5)
    assert every["n"] == 10 and every["value"] == pytest.approx(0.8)
    assert every["ci_low"] < 0.8 < every["ci_high"] <= 1.0
    assert res[("judge_agreement", "global")]["value"] == 0.0  # both orders said "A": the judge followed position
    assert res[("judge_agreement", "local")]["value"] == 1.0


def test_verdict_schema_normalizes_and_rejects():
    model = judge.verdict_model(["usefulness", "directness"])
    ok = model.model_validate_json('{"usefulness": {"winner": "answer a", "reason": "more precise"},'
                                   ' "directness": {"winner": "Tie", "reason": "' + "x" * 900 + '"}}')
    assert ok.usefulness.winner == "A" and ok.directness.winner == "tie" and len(ok.directness.reason) == 300
    with pytest.raises(ValueError):
        model.model_validate_json('{"usefulness": {"winner": "C", "reason": ""}, "directness": {"winner": "A", "reason": ""}}')
    with pytest.raises(ValueError):
        model.model_validate_json('{"usefulness": {"winner": "A", "reason": "x"}}')


def test_criteria_and_pairs():
    assert judge.criteria_of(["usefulness"], graphrag=True) == ["usefulness", *judge.GRAPHRAG_CRITERIA]
    with pytest.raises(UserError, match="unknown"):
        judge.criteria_of(["beauty"], graphrag=False)
    assert judge.system_pairs(["student", "base", "naive_rag"], "student", False) == [("student", "base"), ("student", "naive_rag")]
    assert len(judge.system_pairs(["student", "base", "naive_rag"], "student", True)) == 3


def test_judge_requests_carry_both_orders():
    rows = [{"question_id": "q1", "kind": "local", "system": s, "question": "Q?", "answer": f"<think>r</think>{s} says",
             "reference": "ref", "error": None} for s in ("student", "base")]
    answers = pa.Table.from_pylist(rows)
    reqs = judge.requests(answers, [("student", "base")], ["usefulness"], with_reference=False)
    assert [r["id"] for r in reqs] == ["q1|student|base|ab", "q1|student|base|ba"]
    first, second = reqs[0]["messages"][-1]["content"], reqs[1]["messages"][-1]["content"]
    assert first.index("student says") < first.index("base says")
    assert second.index("base says") < second.index("student says")
    assert "<think>" not in first and "ref" not in first
    shown = judge.requests(answers, [("student", "base")], ["usefulness"], True, {"q1": "She ran by the river."})
    text = shown[0]["messages"][-1]["content"]
    assert "Reference answer" in text and "Evidence from the corpus" in text and "She ran by the river." in text


def test_evidence_is_the_source_chunks_else_the_reports():
    chunks = pa.table({"id": ["c1", "c2"], "text": ["First passage.", "Second passage." * 200]})
    reports = pa.Table.from_pylist([{"community": 3, "title": "Running", "summary": "Runs by the river."}])
    qs = [{"id": "local", "source_chunk_id": "c1", "evidence_chunk_ids": ["c1", "c2"]},
          {"id": "global", "community_ids": ["3"]}, {"id": "none"}]
    ev = judge.evidence_texts(qs, chunks, reports, budget_tokens=100)
    assert ev["local"].startswith("First passage.\n\nSecond") and ev["local"].endswith("[...]") and len(ev["local"]) < 420
    assert ev["global"] == "Running: Runs by the river." and "none" not in ev


# ---- systems helpers -----------------------------------------------------------------------
def _estimate_meter(window: int | None = None, max_tokens: int = 100) -> Meter:
    """A meter without a tokenizer: the 4-characters-per-token estimate, 15% on top."""
    engine = EngineConfig(engine="openai", model="m", base_url="http://h", max_tokens=max_tokens)
    return Meter(engine, EvaluateConfig(context_window=window))


def test_blocks_pack_in_order_and_report_the_cut():
    docs = ["first " + "x " * 100, "second " + "y " * 100, "third " + "z " * 400, "fourth " + "w " * 100]
    blocks = Blocks(docs, _estimate_meter())
    packed = blocks.pack(300)
    assert packed.text.index("first") < packed.text.index("second") < packed.text.index("third")
    assert (packed.blocks_total, packed.blocks_full, packed.blocks_partial) == (4, 2, 1)
    assert "fourth" not in packed.text and "[... cut here" in packed.text
    assert packed.tokens_kept <= 300 and 0.2 < packed.cut_fraction < 0.35
    whole = blocks.pack(10_000)
    assert whole.cut_fraction == 0 and whole.blocks_full == 4 and "cut here" not in whole.text


def test_fit_measures_the_whole_prompt_with_the_models_tokenizer(tiny_llama):
    """The overflow regression: every long_context prompt of the journal, as the hf engine encodes it,
    fits the window with room for max_tokens."""
    from factory.engines.hf import HFGenerator
    from tests.conftest import JOURNAL

    engine = EngineConfig(engine="hf", model=str(tiny_llama), max_tokens=24)
    meter = Meter(engine, EvaluateConfig())
    gen = HFGenerator(str(tiny_llama))
    assert meter.window == gen.context == 2048
    blocks = Blocks([p.read_text() for p in sorted(JOURNAL.glob("*.md"))], meter)
    for question in ("Where?", "What did I write about the pottery class and the long run by the quay? " * 8):
        def render(context: str, question=question) -> list[dict]:
            return [{"role": "system", "content": "Answer from the corpus."},
                    {"role": "user", "content": f"Corpus:\n{context}\n\nQuestion: {question}"}]

        fitted = fit(meter, render, blocks.pack)
        n = len(gen.encode(fitted.messages))
        assert n == meter.prompt(fitted.messages) and n + 24 <= 2048 and n > 2048 - 24 - 150
        assert fitted.packed.cut_fraction > 0.5
    # a question that alone overflows the window is that question's failure, not a crash
    huge = fit(meter, lambda c: [{"role": "user", "content": "word " * 3000 + c}], blocks.pack)
    assert huge.messages is None and huge.error.startswith("prompt_too_long")


def test_fit_with_the_estimate_keeps_the_margin():
    meter = _estimate_meter(window=1000, max_tokens=100)
    blocks = Blocks([f"[{i}] " + "passage words here " * 60 for i in range(10)], meter)
    fitted = fit(meter, lambda c: [{"role": "user", "content": f"Passages:\n{c}\nQuestion: why?"}], blocks.pack)
    chars = sum(len(m["content"]) for m in fitted.messages)
    # 900 tokens for the prompt; the estimate counts 4 characters a token and adds 15%
    assert chars / 4 * 1.15 <= 900 and chars / 4 * 1.15 > 900 - 150
    assert fitted.packed.blocks_full < 10 and fitted.packed.blocks_total == 10


def test_local_search_picks_named_entities_then_similar_ones():
    from factory.synth.retrieval import load_embedder

    entities = pa.Table.from_pylist([
        {"id": "e1", "title": "Quay Road", "description": "A street by the harbour.", "text_unit_ids": ["c1"], "degree": 2},
        {"id": "e2", "title": "Ana", "description": "A friend who runs.", "text_unit_ids": ["c2", "c1"], "degree": 1},
        {"id": "e3", "title": "pottery class", "description": "Weekly ceramics lessons with clay.",
         "text_unit_ids": ["c3"], "degree": 0},
        {"id": "e4", "title": "The", "description": "noise", "text_unit_ids": [], "degree": 9},
    ])
    rels = pa.Table.from_pylist([
        {"source": "Quay Road", "target": "Ana", "description": "Ana lives on Quay Road.", "weight": 3.0,
         "combined_degree": 3, "text_unit_ids": ["c1"]},
    ])
    texts = {"c1": ("Sat 8 Feb", "Ana walked up Quay Road."), "c2": ("Sun 9 Feb", "Ana ran."), "c3": ("Mon", "Clay.")}
    search = LocalSearch(entities, rels, texts.get, validate_config({}).evaluate.graph_local.model_copy(
        update={"top_entities": 2}), load_embedder())
    assert search.named("What happened on quay road with Ana?") == [0, 1]
    assert search.named("The end") == []  # a name of function words only matches nothing
    picked = search.pick(["Tell me about Quay Road.", "What did I make in my ceramics lessons?"])
    assert picked[0][0] == 0 and len(picked[0]) == 2 and picked[1][0] == 2
    records, units = search.records([0, 1])
    assert "Quay Road|A street by the harbour.|1\n" in records and "Quay Road|Ana|Ana lives on Quay Road.|3\n" in records
    assert [u.split("\n")[0] for u in units[1:]] == ["[1] Sat 8 Feb", "[2] Sun 9 Feb"]
    packed = search.packer([0, 1], _estimate_meter())(200)
    assert "Entities" in packed.text and "Sources" in packed.text and packed.tokens_kept <= 200


def test_engine_for_strips_the_adapter_for_baselines(tmp_path):
    (tmp_path / "a").mkdir()
    cfg = validate_config({"student": {"engine": "hf", "model": "m", "adapter": str(tmp_path / "a")},
                           "evaluate": {"engines": {"naive_rag": {"engine": "openai", "model": "x", "base_url": "http://h"}}}})
    assert engine_for(cfg, "student").adapter == str(tmp_path / "a")
    assert engine_for(cfg, "base").adapter is None and engine_for(cfg, "base").model == "m"
    assert engine_for(cfg, "naive_rag").engine == "openai"
    with pytest.raises(UserError, match="needs an LLM"):
        engine_for(validate_config({}), "base")
    with pytest.raises(UserError, match=r"student.adapter: .*/missing does not exist"):
        engine_for(validate_config({"student": {"engine": "hf", "model": "m", "adapter": str(tmp_path / "missing")}}),
                   "student")
    # owner/name may be a Hub adapter: not a folder to check here
    assert engine_for(validate_config({"student": {"engine": "hf", "model": "m", "adapter": "me/lora"}}),
                      "student").adapter == "me/lora"


def test_answer_files_are_a_system_and_what_they_lack_fails(tmp_path):
    from factory.evaluate import systems
    from factory.pipeline import StageRecord

    pq.write_table(pa.table({"id": ["q1", "q3"], "answer": ["One.", "<think>hm</think> "]}), tmp_path / "mine.parquet")
    cfg = validate_config({"evaluate": {"systems": [], "answer_files": {"mine": str(tmp_path / "mine.parquet")}}})
    questions = [{"id": f"q{i}", "kind": "local", "question": "Q?", "answer": "ref"} for i in (1, 2, 3)]
    rows = {r["question_id"]: r for r in systems.answer(None, StageRecord("answer"), None, cfg, ["mine"], questions)}
    assert rows["q1"]["answer"] == "One." and rows["q1"]["error"] is None
    assert rows["q2"]["error"] == "missing_answer: not in the answer file"
    assert rows["q3"]["error"].startswith("empty_answer")  # reasoning only: nothing a user would read


def test_each_stage_depends_on_its_own_evaluate_settings():
    from factory.evaluate import ANSWER_FIELDS, BENCHMARK_FIELDS, JUDGE_FIELDS

    # a new setting must be placed: a stage that ignores a setting it reads would not rerun
    assert set(EvaluateConfig.model_fields) == {*ANSWER_FIELDS, *JUDGE_FIELDS, *BENCHMARK_FIELDS, "bootstrap", "output"}


def test_student_adapter_auto_is_the_finetune_export(tmp_path):
    cfg = validate_config({"student": {"engine": "hf", "model": "m", "adapter": "auto"},
                           "train": {"output": str(tmp_path), "name": "s"}})
    with pytest.raises(UserError, match=r"student.adapter: auto: no adapter at .*s/export/adapter: run `ragtune "
                                        r"finetune --config"):
        engine_for(cfg, "student")
    assert engine_for(cfg, "base").adapter is None
    (tmp_path / "s" / "export" / "adapter").mkdir(parents=True)
    assert engine_for(cfg, "student").adapter == str(tmp_path / "s" / "export" / "adapter")
    plain = validate_config({"student": {"engine": "hf", "model": "m"}, "train": {"output": str(tmp_path), "name": "s"}})
    assert engine_for(plain, "student").adapter is None  # no adapter asked for: the model as it is


def test_select_questions_round_robin_over_kinds_and_sets():
    qa = pa.Table.from_pylist([{"id": f"{k}{i}", "kind": k, "question": "q", "answer": "a", "source_chunk_id": None}
                               for k in ("local", "global", "unanswerable") for i in range(5)])
    picked = select_questions(qa, 6)
    assert sorted(q["kind"] for q in picked) == ["global"] * 2 + ["local"] * 2 + ["unanswerable"] * 2
    assert len(select_questions(qa, None)) == 15 and "question_set" not in picked[0]
    sets = qa.append_column("question_set", pa.array(["main"] * 10 + ["hard_global"] * 5))
    picked = select_questions(sets, 4)
    assert [q["question_set"] for q in picked].count("hard_global") >= 1
    assert question_sets(select_questions(sets, None))["unanswerable0"] == "hard_global"
    assert question_sets(select_questions(qa, None)) == {}


# ---- benchmark ------------------------------------------------------------------------------
def test_benchmark_scoring(tmp_path):
    f = tmp_path / "mini.jsonl"
    f.write_text('{"question": "2+2?", "choices": ["3", "4"], "answer": 1}\n'
                 '{"question": "Capital?", "choices": ["Paris", "Rome"], "answer": "Paris"}\n'
                 '{"question": "6*7?", "answer": "42"}\n{"question": "Colour?", "answer": "Blue"}\n')
    items = benchmark.load_items(str(f), validate_config({}))
    assert [i["answer"] for i in items] == ["B", "A", "42", "Blue"]
    mc, mc2, num, word = items
    assert benchmark.is_correct(mc, "B") and benchmark.is_correct(mc, "(B) 4") and benchmark.is_correct(mc, "The answer is B.")
    assert not benchmark.is_correct(mc, "A") and not benchmark.is_correct(mc, "")
    assert benchmark.is_correct(num, "6 times 7 is 42") and not benchmark.is_correct(num, "42 or 41")
    assert benchmark.is_correct(word, "blue.") and not benchmark.is_correct(word, "green")
    assert "A. Paris" in benchmark.messages(mc2)[-1]["content"]
    pq.write_table(pa.Table.from_pylist([{"question": "Q?", "choices": ["x", "y", "z"], "answer": "C"}]), tmp_path / "b.parquet")
    assert benchmark.load_items(str(tmp_path / "b.parquet"), validate_config({}))[0]["answer"] == "C"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x", "choices": ["a", "b"], "answer": "Z"}\n')
    with pytest.raises(UserError, match="item 1"):
        benchmark.load_items(str(bad), validate_config({}))


def test_benchmark_summary_paired_change():
    rows = [{"question_id": str(i), "kind": "benchmark:mini", "system": s, "correct": c}
            for i in range(10) for s, c in (("base", True), ("student", i < 8))]
    res = {r["metric"] + r["system_a"]: r for r in benchmark.summary(rows, 500)}
    assert res["benchmarkbase"]["value"] == 1.0 and res["benchmarkstudent"]["value"] == 0.8
    change = res["benchmark_changestudent"]
    assert change["value"] == pytest.approx(-0.2) and change["ci_high"] <= 0 and change["system_b"] == "base"


# ---- report ---------------------------------------------------------------------------------
def _answers_with_failures() -> list[dict]:
    """student and base answer; naive_rag failed on every question; long_context came back empty on two."""
    rows = []
    for i in range(5):
        for s in ("student", "base", "naive_rag", "long_context"):
            answer = {"student": "eight km", "base": "nine km", "naive_rag": None,
                      "long_context": "" if i < 2 else "eight km by the quay"}[s]
            error = "llm_error: prompt of 4200 tokens + max_tokens 24 exceeds the model's context" if s == "naive_rag" \
                else "empty_answer: the reply has no text (reasoning removed)" if answer == "" else None
            rows.append(metrics.score({"question_id": f"q{i}", "kind": "local", "system": s, "question": "q",
                                       "answer": answer, "reference": "eight km", "error": error}))
    return rows


ENGINES = {"student": {"engine": "hf", "model": "m", "adapter": "/a"}, "base": {"engine": "hf", "model": "m"},
           "naive_rag": {"engine": "hf", "model": "m"}, "long_context": {"engine": "hf", "model": "m"}}


def test_report_files_contain_the_numbers_and_every_failure(tmp_path):
    cfg = validate_config({"output": {"path": str(tmp_path / "run")}, "evaluate": {"bootstrap": 200}})
    run = Run(cfg, root=str(tmp_path / "eval"))
    answers = _answers_with_failures()
    results = metrics.summary(answers, 200) + judge.win_rates(_judgments([("local", "A", "B")] * 3 + [("local", "B", "A")]), 200)
    stats = {"criteria": ["usefulness"], "judge_saw": {"reference": True, "evidence": 5},
             "long_context": Packed("", 100, 400, 100, 4, 1, 0, "estimate").stats()}
    pairs = judge.system_pairs(list(ENGINES), "student", False)
    secs = report.sections(cfg, "runs/x", ENGINES, answers, results, stats, True, pairs)
    report.write_report(run, cfg, secs, results)
    md = (tmp_path / "eval" / "report.md").read_text()
    page = (tmp_path / "eval" / "report.html").read_text()
    win = next(r for r in results if r["metric"] == "win_rate" and r["kind"] == "all")
    number = report.fmt(win["value"], win["ci_low"], win["ci_high"])
    assert win["value"] == 0.75 and number in md and number in page
    assert "75.0% cut" in md and "75.0% cut" in page
    headline = md.split("## Headline", 1)[1].split("## Setup", 1)[0]
    assert "**naive_rag failed on 5 of 5 questions** (most often: llm_error: prompt of 4200 tokens" in headline
    assert "it is left out of every comparison" in headline
    assert "**long_context failed on 2 of 5 questions** (most often: empty_answer" in headline
    assert "| naive_rag | 0 | 5 | n/a | n/a | n/a | not judged: no question with answers from both |" in headline
    assert "| base | 5 | 0 |" in headline and f"{number} (n=4)" in headline
    assert "no valid verdict on the 3 questions both answered (judge errors" in headline  # long_context vs student
    assert "the reference answer and the corpus evidence (5 questions)" in md
    assert page.count("data:image/png;base64,") >= 4 and 'src="plots/' not in page
    for png in ("win_rates_by_criterion.png", "win_rates_by_kind.png", "answer_lengths.png"):
        assert (tmp_path / "eval" / "plots" / png).stat().st_size > 1000 and f"plots/{png}" in md
    back = pq.read_table(tmp_path / "eval" / "results.parquet")
    assert back.schema.equals(schemas.schema_of("eval_results"), check_metadata=False) and back.num_rows == len(results)
    assert "evaluate:" in (tmp_path / "eval" / "config.yaml").read_text()


def test_report_without_a_judge_says_so(tmp_path):
    cfg = validate_config({"judge": {"engine": "none"}, "evaluate": {"bootstrap": 100}})
    answers = _answers_with_failures()
    results = metrics.summary(answers, 100)
    md = report.render_md("r", report.sections(cfg, "runs/x", ENGINES, answers, results, {}, False, []))
    headline = md.split("## Headline", 1)[1].split("## Setup", 1)[0]
    assert "**No judge was used** (judge.engine: none)" in headline and "win rate" not in headline
    f1 = next(r for r in results if r["metric"] == "token_f1" and r["kind"] == "all" and r["system_a"] == "student")
    assert f"| student | 5 | 0 | {report.fmt(f1['value'], f1['ci_low'], f1['ci_high'])} |" in headline
    assert "naive_rag failed on 5 of 5" in headline and "Pairwise" not in md


def test_report_to_s3(s3_bucket):
    endpoint, bucket = s3_bucket
    cfg = validate_config({"s3": {"endpoint_url": endpoint}, "evaluate": {"bootstrap": 100}})
    run = Run(cfg, root=f"s3://{bucket}/eval")
    answers = [metrics.score({"question_id": "q", "kind": "local", "system": "base", "question": "q", "answer": "a",
                              "reference": "a", "error": None})]
    results = metrics.summary(answers, 100)
    report.write_report(run, cfg, report.sections(cfg, "s3://x", {"base": {"engine": "hf", "model": "m"}}, answers,
                                                  results, {}, False, []), results)
    names = {p.rsplit("/", 1)[-1] for p in run.fs.find(f"{bucket}/eval")}
    assert {"report.md", "report.html", "results.parquet", "config.yaml", "answer_lengths.png"} <= names
