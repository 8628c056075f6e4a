"""The `ragtune` command: help, version, per-job usage, and what a job prints."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from factory import __version__
from factory.cli import JOBS, main
from tests.support.runs import JOURNAL, ROOT, journal_corpus


def test_help_lists_every_job_with_a_line(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ragtune [-h] [--version] {generate,publish,finetune,evaluate} ...")
    for job in JOBS:
        line = next(l for l in out.splitlines() if l.startswith(f"  {job} "))
        assert len(line.split()) > 4, line  # the job and what it does
    assert main([]) == 2  # no job: the same help, as an error
    assert main(["bogus"]) == 2 and "no job 'bogus'" in capsys.readouterr().err


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ragtune {__version__}"


def test_a_job_usage_names_the_job_and_until_lists_the_stages(capsys):
    with pytest.raises(SystemExit) as done:
        main(["generate", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ragtune generate [-h]")
    assert "stop after this stage: ingest, chunk, graph, reports, synthesis" in " ".join(out.split())
    with pytest.raises(SystemExit) as done:
        main(["generate", "--until", "graphs"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'graphs' (choose from 'ingest', 'chunk', 'graph', 'reports', 'synthesis')" in err
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    assert capsys.readouterr().out.startswith("usage: ragtune finetune [-h]")


@pytest.mark.slow
def test_a_local_job_prints_a_few_readable_lines(tmp_path):
    """A job with its own local Ray, as a new user runs it: relative paths land in the directory it ran in;
    no token-auth warning, no Ray progress blocks, no worker output, no traceback."""
    journal_corpus(tmp_path / "notes", 6)
    (tmp_path / "home").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    # Ray keeps its auth token under $HOME: the test's own home, not the user's.
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "jobs.generate", "--set", "corpus.path=notes", "--set", "output.path=runs/q",
                        "--set", "ray.num_cpus=2", "--until", "graph"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stderr.splitlines()
    assert lines[-1].startswith(f"ragtune: generate finished: {tmp_path / 'runs' / 'q'} ")
    assert (tmp_path / "runs" / "q" / "_stages" / "graph.json").is_file()
    for noise in ("Traceback", "Token authentication", "logging_progress", "Progress bars", "(pid=", "INFO"):
        assert noise not in r.stderr, r.stderr[-3000:]
    # started + summary per stage, the last line; a progress line per 15 s of a stage on a slow day.
    assert len(lines) <= 7 + 6, r.stderr
    assert not (tmp_path / "notes" / "runs").exists() and JOURNAL.is_dir()
