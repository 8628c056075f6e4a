"""`python -m jobs.evaluate`'s config errors: one line before any model loads. The whole job end to
end (every system, the loopback judge, answer files, a benchmark, a rerun) runs in
tests/test_walkthrough.py, on the README walkthrough's own run and finetuned student."""

from __future__ import annotations

import pytest

from jobs.evaluate import main as evaluate_main


@pytest.mark.parametrize("extra, message", [
    ([], "no qa test split"),
    (["evaluate.criteria=[beauty]"], "evaluate.criteria: unknown ['beauty']"),
    (["evaluate.systems=[oracle]"], "unknown system 'oracle'"),
    (["evaluate.systems=[base]", "student=null"], "system 'base' needs an LLM"),
    (["student.adapter=auto", "train.name=never"], "student/never/export/adapter: run `ragtune finetune"),
    (["evaluate.systems=[long_context]", "student.engine=openai", "student.base_url=http://h/v1"],
     "long_context with engine 'openai' needs evaluate.context_window"),
])
def test_bad_input_is_one_clear_line_before_any_model_loads(tmp_path, capsys, extra, message):
    overrides = [f"output.path={tmp_path}", "student.engine=hf", "student.model=m", *extra]
    assert evaluate_main([x for o in overrides for x in ("--set", o)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "[answer] started" not in err
