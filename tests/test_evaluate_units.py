"""Evaluation pieces that need no LLM: metrics, both-order logic, intervals, packing, benchmark scoring, report."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from factory.config import validate_config
from factory.errors import UserError
from factory.evaluate import benchmark, judge, metrics, report, select_questions
from factory.evaluate.systems import Packed, TokenCounter, engine_for, pack_corpus
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
    assert res[("false_refusal_rate", "all")]["value"] == 0.5
    assert res[("answer_tokens", "all")]["n"] == 4


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


# ---- systems helpers -----------------------------------------------------------------------
def test_pack_corpus_orders_by_date_and_reports_the_cut():
    docs = pa.Table.from_pylist([
        {"id": "c", "title": "third", "text": "z " * 400, "source": "c.md", "date": "2025-03-01"},
        {"id": "a", "title": "first", "text": "x " * 100, "source": "a.md", "date": "2025-01-01"},
        {"id": "b", "title": "second", "text": "y " * 100, "source": "b.md", "date": "2025-02-01"},
        {"id": "d", "title": "fourth", "text": "w " * 100, "source": "d.md", "date": "2025-04-01"},
    ])
    counter = TokenCounter(validate_config({}).teacher)  # engine none: 4 characters per token
    packed = pack_corpus(docs, budget=250, counter=counter)
    assert packed.text.index("first") < packed.text.index("second") < packed.text.index("third")
    assert (packed.docs_total, packed.docs_full, packed.docs_partial) == (4, 2, 1)
    assert "fourth" not in packed.text and "[... document truncated" in packed.text
    assert packed.tokens_kept <= 250 and 0.3 < packed.cut_fraction < 0.45
    whole = pack_corpus(docs, budget=10_000, counter=counter)
    assert whole.cut_fraction == 0 and whole.docs_full == 4 and "truncated" not in whole.text


def test_engine_for_strips_the_adapter_for_baselines():
    cfg = validate_config({"student": {"engine": "hf", "model": "m", "adapter": "/a"},
                           "evaluate": {"engines": {"naive_rag": {"engine": "openai", "model": "x", "base_url": "http://h"}}}})
    assert engine_for(cfg, "student").adapter == "/a"
    assert engine_for(cfg, "base").adapter is None and engine_for(cfg, "base").model == "m"
    assert engine_for(cfg, "naive_rag").engine == "openai"
    with pytest.raises(UserError, match="needs an LLM"):
        engine_for(validate_config({}), "base")


def test_student_adapter_defaults_to_the_finetune_export(tmp_path):
    cfg = validate_config({"student": {"engine": "hf", "model": "m"}, "train": {"output": str(tmp_path), "name": "s"}})
    assert engine_for(cfg, "student").adapter is None
    (tmp_path / "s" / "export" / "adapter").mkdir(parents=True)
    assert engine_for(cfg, "student").adapter == str(tmp_path / "s" / "export" / "adapter")
    assert engine_for(cfg, "base").adapter is None


def test_select_questions_round_robin_over_kinds():
    qa = pa.Table.from_pylist([{"id": f"{k}{i}", "kind": k, "question": "q", "answer": "a", "source_chunk_id": None}
                               for k in ("local", "global", "unanswerable") for i in range(5)])
    picked = select_questions(qa, 6)
    assert sorted(q["kind"] for q in picked) == ["global"] * 2 + ["local"] * 2 + ["unanswerable"] * 2
    assert len(select_questions(qa, None)) == 15


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
def test_report_files_contain_the_numbers(tmp_path):
    cfg = validate_config({"output": {"path": str(tmp_path / "run")}, "evaluate": {"bootstrap": 200}})
    run = Run(cfg, root=str(tmp_path / "eval"))
    answers = [metrics.score({"question_id": f"q{i}", "kind": "local", "system": s, "question": "q",
                              "answer": "eight km" if s == "student" else "nine km", "reference": "eight km",
                              "error": None}) for i in range(5) for s in ("student", "base")]
    results = metrics.summary(answers, 200) + judge.win_rates(_judgments([("local", "A", "B")] * 3 + [("local", "B", "A")]), 200)
    stats = {"criteria": ["usefulness"], "long_context": Packed("", 100, 400, 100, 4, 1, 0, "estimate").stats()}
    secs = report.sections(cfg, "runs/x", {"student": {"engine": "hf", "model": "m", "adapter": "/a"},
                                           "base": {"engine": "hf", "model": "m"}}, answers, results, stats, True)
    report.write_report(run, cfg, secs, results)
    md = (tmp_path / "eval" / "report.md").read_text()
    page = (tmp_path / "eval" / "report.html").read_text()
    win = next(r for r in results if r["metric"] == "win_rate" and r["kind"] == "all")
    number = report.fmt(win["value"], win["ci_low"], win["ci_high"])
    assert win["value"] == 0.75 and number in md and number in page
    assert "75.0% cut" in md and "75.0% cut" in page
    assert page.count("data:image/png;base64,") >= 4 and 'src="plots/' not in page
    for png in ("win_rates_by_criterion.png", "win_rates_by_kind.png", "answer_lengths.png"):
        assert (tmp_path / "eval" / "plots" / png).stat().st_size > 1000 and f"plots/{png}" in md
    back = pq.read_table(tmp_path / "eval" / "results.parquet")
    assert back.schema.equals(schemas.schema_of("eval_results"), check_metadata=False) and back.num_rows == len(results)
    assert "evaluate:" in (tmp_path / "eval" / "config.yaml").read_text()


def test_report_to_s3(s3_bucket):
    endpoint, bucket = s3_bucket
    cfg = validate_config({"s3": {"endpoint_url": endpoint}, "evaluate": {"bootstrap": 100}})
    run = Run(cfg, root=f"s3://{bucket}/eval")
    answers = [metrics.score({"question_id": "q", "kind": "local", "system": "base", "question": "q", "answer": "a",
                              "reference": "a", "error": None})]
    results = metrics.summary(answers, 100)
    report.write_report(run, cfg, report.sections(cfg, "s3://x", {"base": {"engine": "hf", "model": "m"}}, answers,
                                                  results, {}, False), results)
    names = {p.rsplit("/", 1)[-1] for p in run.fs.find(f"{bucket}/eval")}
    assert {"report.md", "report.html", "results.parquet", "config.yaml", "answer_lengths.png"} <= names
