"""The README walkthrough as a new user runs it: generate -> publish -> finetune -> evaluate on the
bundled journal with the tiny local student, each command taken from README.md and run as its own
process in a folder that holds only the repository's configs and examples; then the same evaluate
with a judge on loopback HTTP (and a benchmark file), then a rerun; then what fails at job start."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import ROOT, free_port
from tests.support.openai_server import FakeOpenAIServer, prefers_longer

LLM_SYSTEMS = ["student", "base", "naive_rag", "long_context", "graph_local"]
SYSTEMS = [*LLM_SYSTEMS, "graph_global"]
STEP_TIMEOUT_S = 900


def walkthrough() -> list[str]:
    """The commands of the README's walkthrough block, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- walkthrough -->", 1)[1].split("<!-- /walkthrough -->", 1)[0]
    body = block.strip().removeprefix("```bash").removesuffix("```")
    return [line.strip() for line in body.splitlines() if line.strip() and not line.startswith("#")]


def run(command: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    assert done.returncode == 0, f"{shlex.join(command)} exited {done.returncode}:\n{done.stderr[-4000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    """A folder like a fresh clone's root (configs and examples), every walkthrough command run in it."""
    work = tmp_path_factory.mktemp("clone")
    for name in ("configs", "examples"):
        (work / name).symlink_to(ROOT / name)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "JUDGE_BASE_URL")}
    env["PYTHONPATH"] = str(ROOT)  # the code under test, as `pip install -e .` in the clone would give
    commands = walkthrough()
    assert [c.split()[:3] for c in commands] == [["python", "-m", m] for m in (
        "examples.tiny_student", "jobs.generate", "jobs.publish", "jobs.finetune", "jobs.evaluate")]
    logs = {c.split()[2]: run([sys.executable, *shlex.split(c)[1:]], work, env) for c in commands}
    return work, env, commands[-1], logs


def test_every_step_runs_and_leaves_what_the_readme_says(walked):
    work, _, _, logs = walked
    assert (work / "runs/tiny-student/config.json").exists()
    qa = pq.read_table(work / "runs/published/journal/qa")
    assert set(qa.column("split").to_pylist()) == {"train", "test"} and (work / "runs/published/journal/README.md").exists()
    export = work / "runs/student/student/export"
    assert (export / "adapter/adapter_config.json").exists() and (export / "merged/config.json").exists()
    assert "export" in logs["jobs.finetune"].stderr

    out = work / "runs/eval"
    answers = pq.read_table(out / "eval_answers").to_pylist()
    assert sorted({r["system"] for r in answers}) == sorted(SYSTEMS) and len(answers) == 12 * len(SYSTEMS)
    by = {(r["system"], r["question_id"]): r for r in answers}
    qids = sorted({r["question_id"] for r in answers})
    for system in LLM_SYSTEMS:  # every prompt fits the tiny model's 2048 tokens; every answer has words
        assert all(by[(system, q)]["error"] is None for q in qids), [by[(system, q)]["error"] for q in qids]
    marker = json.loads((out / "_stages/answer.json").read_text())
    stats = marker["stats"]
    assert stats["engines"]["student"]["adapter"].endswith("runs/student/student/export/adapter")  # auto
    lc = stats["long_context"]
    assert lc["cut_fraction"] > 0.5 and lc["tokens_kept"] <= lc["budget_tokens"] < 2048
    assert "tokenizer and chat template" in lc["counted_with"] and stats["long_context"]["prompts_too_long"] == 0
    assert stats["naive_rag"]["reranked"] and stats["naive_rag"]["top_k"] == 10
    assert stats["naive_rag"]["source_chunk_recall"] is not None and stats["graph_local"]["questions_naming_an_entity"] > 0

    md = (out / "report.md").read_text()
    headline = md.split("## Headline", 1)[1].split("## Setup", 1)[0]
    assert "**No judge was used** (judge.engine: none)" in headline and "## Win rate" not in md
    for system in SYSTEMS:
        answered = sum(by[(system, q)]["error"] is None for q in qids)
        assert f"| {system} | {answered} | {12 - answered} |" in headline
    # The tiny random student writes no JSON for graph_global's map step: every question fails, each with the
    # reason, and the headline says so, not hidden (tests/test_evaluate_graph_global.py checks answered ones).
    gg_errors = [by[("graph_global", q)]["error"] or "" for q in qids]
    assert all(re.fullmatch(r"no_key_points: .* \((\d+) of \1 map calls failed\)", e) for e in gg_errors), gg_errors
    assert "**graph_global failed on 12 of 12 questions** (most often: no_key_points: " in headline
    results = pq.read_table(out / "results.parquet").to_pylist()
    f1 = next(r for r in results if r["metric"] == "token_f1" and r["kind"] == "all" and r["system_a"] == "student")
    assert f"{f1['value']:.3f} [{f1['ci_low']:.3f}, {f1['ci_high']:.3f}]" in headline
    kinds = {r["kind"] for r in results if r["metric"] == "token_f1"}
    assert {"all", "local", "global", "unanswerable"} <= kinds
    if len(set(pq.read_table(work / "runs/published/journal/qa").column("question_set").to_pylist())) > 1:
        assert any(k.startswith("set:") for k in kinds)


def without_override(args: list[str], override: str) -> list[str]:
    i = args.index(override)
    assert args[i - 1] == "--set"
    return args[: i - 1] + args[i + 1:]


def test_with_a_judge_and_a_benchmark_then_a_rerun(walked, tmp_path):
    """The README's last command without `judge.engine=none`, JUDGE_BASE_URL pointing at a loopback judge,
    plus a benchmark file: the answers are reused, the judge and the benchmark run."""
    work, env, command, _ = walked
    bench = tmp_path / "mini_mmlu.jsonl"
    bench.write_text('{"question": "2+2?", "choices": ["3", "4"], "answer": "B"}\n{"question": "6*7?", "answer": "42"}\n')
    args = [*without_override(shlex.split(command)[1:], "judge.engine=none"),
            "--set", f"evaluate.benchmark_file={bench}"]
    with FakeOpenAIServer(prefers_longer) as server:
        judged = run([sys.executable, *args], work, {**env, "JUDGE_BASE_URL": server.base_url})
        shown = [r["messages"][-1]["content"] for r in server.requests]
    assert "[answer] up to date, skipped" in judged.stderr  # a judge or a benchmark does not re-answer
    assert shown and all("Reference answer" in t for t in shown) and any("Evidence from the corpus" in t for t in shown)
    out = work / "runs/eval"
    answers = pq.read_table(out / "eval_answers").to_pylist()
    test = [r for r in answers if not (r["kind"] or "").startswith("benchmark")]
    by = {(r["system"], r["question_id"]): r for r in test}
    # the finetuned adapter is applied: the student does not say what base says
    assert any(by[("student", q)]["answer"] != by[("base", q)]["answer"] for q in {r["question_id"] for r in test})
    bench_rows = [r for r in answers if (r["kind"] or "").startswith("benchmark")]
    assert len(bench_rows) == 4 and {r["system"] for r in bench_rows} == {"base", "student"}

    results = pq.read_table(out / "results.parquet").to_pylist()
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    win = next(r for r in results if r["metric"] == "win_rate" and r["kind"] == "all" and r["system_b"] == "base")
    for text in (md, page):
        assert f"{win['value']:.3f} [{win['ci_low']:.3f}, {win['ci_high']:.3f}]" in text
    assert "No judge was used" not in md and "the reference answer and the corpus evidence" in md
    assert {"win_rate", "judge_agreement", "token_f1", "benchmark", "benchmark_change"} <= {r["metric"] for r in results}
    assert "data:image/png;base64," in page and (out / "plots/win_rates_by_kind.png").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["evaluate"]["max_questions"] == 12

    # a rerun skips answer and benchmark; the judge (its base_url changed) is served from the call cache
    with FakeOpenAIServer(prefers_longer) as server:
        again = run([sys.executable, *args], work, {**env, "JUDGE_BASE_URL": server.base_url})
        assert server.requests == []
    assert again.stderr.count("up to date, skipped") == 2


@pytest.mark.parametrize("extra, message", [
    (["--set", "train.name=never-trained"], r"student.adapter: auto: no adapter at \S*runs/student/never-trained/"
                                            r"export/adapter: run `ragtune finetune --config configs/evaluate.yaml` first"),
    (["--set", "student.adapter=runs/student/adapter"], r"student.adapter: \S*runs/student/adapter does not exist"),
    (["--set", "judge.engine=openai"], r"evaluate: judge: openai engine: cannot reach http://127.0.0.1:\d+/v1 .*"
                                       r"--set judge.engine=none"),
])
def test_what_is_missing_is_one_line_at_job_start(walked, extra, message, monkeypatch, capsys):
    """A missing adapter or an unreachable judge: one line and exit 2 before Ray starts (the job's own
    entry point, in this process: the same code path as the command, without a second interpreter)."""
    from jobs.evaluate import main as evaluate_main

    work, _, command, _ = walked
    monkeypatch.chdir(work)
    monkeypatch.setenv("JUDGE_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    assert evaluate_main([*shlex.split(command)[3:], "--set", "evaluate.output=runs/eval-never", *extra]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err and "[answer]" not in err, err[-3000:]
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert not (work / "runs/eval-never").exists()
