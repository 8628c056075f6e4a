"""Relative paths in a config are resolved once, against the directory the job ran in."""

from __future__ import annotations

import json
import os

import pytest

from factory.config import load_config
from factory.errors import UserError
from factory.paths import check_job_outputs, resolve_paths


def test_local_paths_resolve_and_urls_hub_ids_and_keywords_stay(tmp_path):
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    cfg = load_config(None, [
        "corpus.path=notes/*.md", "output.path=runs/q", "train.dataset=../published", "train.output=~/students",
        "train.model=models/tiny", "teacher.engine=hf", "teacher.model=Qwen/Qwen2.5-0.5B-Instruct",
        "student.engine=hf", "student.model=./models/tiny", "student.adapter=auto", "chunking.tokenizer=default",
        "evaluate.output=s3://bucket/eval", "evaluate.answer_files={mine: answers.parquet}",
        "evaluate.benchmark_file=file://bench.jsonl",
    ])
    resolve_paths(cfg, str(tmp_path))
    assert cfg.corpus.path == str(tmp_path / "notes" / "*.md")
    assert cfg.output.path == str(tmp_path / "runs" / "q")
    assert cfg.train.dataset == str(tmp_path.parent / "published")
    assert cfg.train.output == os.path.expanduser("~/students")
    assert cfg.train.model == cfg.student.model == str(tmp_path / "models" / "tiny")  # exists here: a local folder
    assert cfg.teacher.model == "Qwen/Qwen2.5-0.5B-Instruct"  # no such folder: a Hub id
    assert cfg.student.adapter == "auto" and cfg.chunking.tokenizer == "default"
    assert cfg.evaluate.output == "s3://bucket/eval"
    assert cfg.evaluate.answer_files == {"mine": str(tmp_path / "answers.parquet")}
    assert cfg.evaluate.benchmark_file == str(tmp_path / "bench.jsonl")
    hf = resolve_paths(load_config(None, ["corpus.format=hf", "corpus.path=owner/dataset"]), str(tmp_path))
    assert hf.corpus.path == "owner/dataset"


def test_resolution_is_stable(tmp_path):
    """Resolving twice (a job, then a function it calls) changes nothing, so the config hash is stable."""
    cfg = resolve_paths(load_config(None), str(tmp_path))
    again = resolve_paths(load_config(None, [f"output.path={cfg.output.path}", f"corpus.path={cfg.corpus.path}",
                                             f"train.output={cfg.train.output}"]), "/elsewhere")
    assert again.hash == cfg.hash


def submitted_from(monkeypatch, copy, working_dir: bool = True) -> None:
    """What `ray job submit [--working-dir .]` gives the driver: its job config, and the copy as cwd."""
    runtime_env = {"working_dir": "gcs://_ray_pkg_0123.zip"} if working_dir else {}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": runtime_env, "metadata": {}}))
    monkeypatch.chdir(copy)


def test_relative_output_in_a_submitted_copy_on_one_node_is_announced(ray_session, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "_ray_pkg_0123"
    copy.mkdir()
    submitted_from(monkeypatch, copy)
    cfg = resolve_paths(load_config(None, ["train.output=s3://bucket/students"]))
    check_job_outputs(cfg, "output.path", "train.output")
    err = capsys.readouterr().err
    assert f"output.path 'runs/quickstart' is relative, so it is written into Ray's copy of the working dir, {copy}/runs/quickstart" in err
    assert "--set output.path=$PWD/runs/quickstart" in err and "train.output" not in err
    # An absolute output, or a job submitted without a working dir, needs no word.
    check_job_outputs(resolve_paths(load_config(None, [f"output.path={tmp_path / 'run'}"])), "output.path")
    submitted_from(monkeypatch, copy, working_dir=False)
    check_job_outputs(cfg, "output.path")
    assert capsys.readouterr().err == ""


def test_relative_output_in_a_submitted_copy_on_several_nodes_is_an_error(ray_session, tmp_path, monkeypatch):
    # The real two-node case runs in test_cluster_jobs; here the node count is the unit's only input.
    submitted_from(monkeypatch, tmp_path)
    monkeypatch.setattr(ray_session, "nodes", lambda: [{"Alive": True}] * 3)
    with pytest.raises(UserError, match=r"train.output: 'runs/student' is a relative local path, and under "
                                        r"`ray job submit` on a cluster of 3 nodes .* use shared storage"):
        check_job_outputs(resolve_paths(load_config(None)), "train.output")
