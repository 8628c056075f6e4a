"""An unreachable engine fails `generate` at job start, before ingest; roles no stage to run will call are not checked."""

from __future__ import annotations

import pytest

from factory.config import validate_config
from factory.engines.preflight import preflight
from factory.errors import UserError
from factory.generate import STAGES, generate
from factory.pipeline import Run, Stage, plan, run_stages
from tests.conftest import JOURNAL, free_port


def config(tmp_path, **roles: dict):
    return validate_config({"corpus": {"path": str(JOURNAL)}, "output": {"path": str(tmp_path / "run")}, **roles})


def unreachable() -> dict:
    return {"engine": "openai", "model": "m", "base_url": f"http://127.0.0.1:{free_port()}/v1", "timeout_s": 5}


@pytest.mark.parametrize("role", ["teacher", "judge"])
def test_unreachable_engine_fails_before_the_first_stage(tmp_path, role):
    with pytest.raises(UserError, match="openai engine: cannot reach http://127.0.0.1"):
        generate(config(tmp_path, **{role: unreachable()}))
    assert not (tmp_path / "run" / "_stages").exists()


def check(run: Run, stages: list[Stage], force: bool = False) -> None:
    """The preflight generate runs: the engines of the roles the stages that will run declare."""
    preflight(run.cfg, plan(run, stages, force))


def test_roles_no_stage_to_run_calls_are_not_checked(tmp_path):
    # No generate stage calls the student; ingest and chunk call no role.
    check(Run(config(tmp_path, student=unreachable())), STAGES)
    check(Run(config(tmp_path, teacher=unreachable())), STAGES[:2])
    with pytest.raises(UserError, match="cannot reach"):
        check(Run(config(tmp_path, teacher=unreachable())), STAGES[:3])


def test_finished_stages_are_not_checked_unless_rerun(tmp_path):
    run = Run(config(tmp_path, teacher=unreachable()))
    stages = [Stage("a", lambda run, rec: None, sections=("corpus",)),
              Stage("b", lambda run, rec: None, sections=("teacher",), inputs=("a",), roles=("teacher",))]
    run_stages(run, stages)
    check(run, stages)  # both up to date: nothing will call the teacher
    with pytest.raises(UserError, match="cannot reach"):
        check(run, stages, force=True)
    run.fs.rm(run.uri("_stages", "a.json"))  # `a` reruns, so `b` downstream of it does too
    with pytest.raises(UserError, match="cannot reach"):
        check(run, stages)
