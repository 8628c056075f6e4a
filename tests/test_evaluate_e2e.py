"""`python -m jobs.evaluate` end to end: the tiny Llama (hf engine) answers as every system on a
small run built from examples/journal; a scripted judge on loopback HTTP compares them."""

from __future__ import annotations

import json
import re
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import schemas
from factory.config import load_config
from factory.evaluate import select_questions
from factory.generate import generate
from jobs.evaluate import main as evaluate_main
from tests.support.openai_server import FakeOpenAIServer

SYSTEMS = ["student", "base", "naive_rag", "long_context", "graph_local", "graph_global"]


GENERATE = ["chunking.size=200", "chunking.overlap=40", "synth.test_fraction=0.3"]


@pytest.fixture
def small_run(tmp_path_factory, ray_session, journal):
    """`generate` without an LLM (rule-based teacher) over February's entries: every table, a test split."""
    out = tmp_path_factory.mktemp("run")
    run = generate(load_config(None, [f"corpus.path={journal}/2025-02-*.md", f"output.path={out}", *GENERATE]))
    kinds = set(run.read_arrow("qa", "test").column("kind").to_pylist())
    assert {"local", "global", "entity", "unanswerable"} <= kinds and run.read_arrow("community_reports").num_rows
    return out


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_llama):
    """A LoRA adapter with random (non-zero) weights, so the student really differs from base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("adapter")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                           LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(path)
    return path


def prefers_longer(request: dict) -> str:
    text = request["messages"][-1]["content"]
    criteria = re.search(r"Judge these criteria: (.+)", text).group(1).split(", ")
    a = re.search(r"Answer A:\n(.*?)\n\nAnswer B:", text, re.S).group(1)
    b = re.search(r"Answer B:\n(.*?)\n\nJudge these", text, re.S).group(1)
    winner = "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"
    return json.dumps({c: {"winner": winner, "reason": "More detail."} for c in criteria})


@pytest.mark.slow
def test_every_system_end_to_end_and_the_report(small_run, tiny_llama, adapter, tmp_path, capsys):
    qa = pq.read_table(small_run / "qa", filters=[("split", "=", "test")])
    qids = [q["id"] for q in select_questions(qa, 5)]  # what max_questions=5 picks: one question per kind
    answers_file = tmp_path / "mine.parquet"
    pq.write_table(pa.table({"id": qids[:3], "answer": ["One.", "Two.", "Three."]}), answers_file)
    bench = tmp_path / "mini_mmlu.jsonl"
    bench.write_text('{"question": "2+2?", "choices": ["3", "4"], "answer": "B"}\n'
                     '{"question": "6*7?", "answer": "42"}\n')
    with FakeOpenAIServer(prefers_longer) as server:
        config = {
            "output": {"path": str(small_run)},
            "chunking": {"size": 200, "overlap": 40},
            "synth": {"top_k": 2, "map_batch_tokens": 400, "test_fraction": 0.3},
            "student": {"engine": "hf", "model": str(tiny_llama), "adapter": str(adapter), "max_tokens": 12,
                        "batch_size": 8},
            "judge": {"engine": "openai", "model": "judge", "base_url": server.base_url, "max_retries": 0},
            "evaluate": {"answer_files": {"mine": str(answers_file)}, "benchmark_file": str(bench),
                         "max_questions": 5, "bootstrap": 100, "output": str(tmp_path / "eval")},
        }
        path = tmp_path / "evaluate.yaml"
        path.write_text(yaml.safe_dump(config))
        assert evaluate_main(["--config", str(path)]) == 0
        judge_calls = len(server.requests)
    out = tmp_path / "eval"

    answers = pq.read_table(out / "eval_answers", filters=None).to_pylist()
    test = [r for r in answers if r["kind"] and not r["kind"].startswith("benchmark")]
    assert sorted({r["system"] for r in test}) == sorted(SYSTEMS + ["mine"]) and len(test) == 5 * 7
    by = {(r["system"], r["question_id"]): r for r in test}
    assert {r["question_id"] for r in test} == set(qids)
    assert {r["kind"] for r in test} >= {"local", "global", "entity", "unanswerable"}
    for system in ("student", "base", "naive_rag", "long_context", "graph_local"):
        assert all(by[(system, q)]["error"] is None for q in qids), system
    # the adapter is applied: the student does not say what base says
    assert any(by[("student", q)]["answer"] != by[("base", q)]["answer"] for q in qids)
    # an answer file is a system; questions it lacks are failures, never silent gaps
    assert by[("mine", qids[0])]["answer"] == "One." and by[("mine", qids[4])]["error"] == "missing_answer: not in the answer file"
    assert all(r["token_f1"] is not None for r in test if r["error"] is None)

    markers = {s: json.loads((out / "_stages" / f"{s}.json").read_text()) for s in ("answer", "judge", "report")}
    lc = markers["answer"]["stats"]["long_context"]
    assert lc["cut_fraction"] > 0 and lc["tokens_kept"] <= lc["budget_tokens"] and "tokenizer" in lc["counted_with"]
    assert markers["answer"]["stats"]["naive_rag"]["source_chunk_recall"] is not None
    assert judge_calls > 0 and markers["judge"]["rows_out"] > 0

    bench_rows = [r for r in answers if (r["kind"] or "").startswith("benchmark")]
    assert len(bench_rows) == 4 and {r["system"] for r in bench_rows} == {"base", "student"}

    results = pq.read_table(out / "results.parquet")
    assert results.schema.equals(schemas.schema_of("eval_results"), check_metadata=False)
    rows = results.to_pylist()
    metrics = {r["metric"] for r in rows}
    assert {"win_rate", "token_f1", "rouge_l", "answer_tokens", "refusal_accuracy", "benchmark", "benchmark_change"} <= metrics
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    win = next(r for r in rows if r["metric"] == "win_rate" and r["kind"] == "all")
    f1 = next(r for r in rows if r["metric"] == "token_f1" and r["kind"] == "all" and r["system_a"] == "student")
    for text in (md, page):
        assert f"{win['value']:.3f} [{win['ci_low']:.3f}, {win['ci_high']:.3f}]" in text
        assert f"{f1['value']:.3f} [{f1['ci_low']:.3f}, {f1['ci_high']:.3f}]" in text
        assert f"{100 * lc['cut_fraction']:.1f}% cut" in text
    # graph_global ran through map-reduce; whatever failed (the tiny model writes no JSON) is reported, not hidden
    gg = [by[("graph_global", q)] for q in qids]
    assert all((r["answer"] is None) == (r["error"] is not None) for r in gg)
    failures = Counter(r["error"] for r in gg if r["error"])
    assert not failures or failures.most_common(1)[0][0][:80] in md
    assert "data:image/png;base64," in page and (out / "plots" / "answer_lengths.png").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["evaluate"]["bootstrap"] == 100

    # a rerun skips answer and benchmark; the judge (its base_url changed) is served from the call cache
    capsys.readouterr()
    with FakeOpenAIServer(prefers_longer) as server:
        config["judge"]["base_url"] = server.base_url
        path.write_text(yaml.safe_dump(config))
        assert evaluate_main(["--config", str(path)]) == 0
        assert server.requests == []
    assert capsys.readouterr().err.count("up to date, skipped") == 2
    assert pq.read_table(out / "results.parquet").num_rows == len(rows)


@pytest.mark.parametrize("extra, message", [
    ([], "no qa test split"),
    (["evaluate.criteria=[beauty]"], "evaluate.criteria: unknown ['beauty']"),
    (["evaluate.systems=[oracle]"], "unknown system 'oracle'"),
    (["evaluate.systems=[base]", "student=null"], "system 'base' needs an LLM"),
])
def test_bad_input_is_one_clear_line_before_any_model_loads(tmp_path, capsys, extra, message):
    overrides = [f"output.path={tmp_path}", "student.engine=hf", "student.model=m", *extra]
    assert evaluate_main([x for o in overrides for x in ("--set", o)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "[answer] started" not in err
