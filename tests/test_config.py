"""Config loading: bad input is one line and exit 2; secrets never leak."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from factory.config import load_config
from factory.errors import UserError
from tests.conftest import ROOT


def write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "chunking: {size: 300, overlap: 50}\n"), ["corpus.path=/data", "teacher.temperature=0.5"])
    assert cfg.chunking.size == 300 and cfg.chunking.overlap == 50
    assert cfg.corpus.path == "/data"
    assert cfg.teacher.temperature == 0.5
    assert cfg.output.path == "runs/quickstart"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("corpus: {pth: x}\n", "corpus.pth: unknown key"),
        ("chunking: {size: many}\n", "chunking.size:"),
        ("chunking: {size: 100, overlap: 200}\n", "overlap (200) must be smaller than size (100)"),
        ("teacher: {engine: gpt}\n", "teacher.engine:"),
        ("teacher: {engine: openai, model: m}\n", "needs a base_url"),
        ("corpus: [unclosed\n", "bad YAML"),
        ("- a list\n", "top level must be a mapping"),
    ],
)
def test_bad_config_is_one_line(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message
    assert "\n" not in message


def test_env_interpolation_and_secret_masking(tmp_path, monkeypatch):
    monkeypatch.setenv("RT_TEST_KEY", "sk-planted-secret-123")
    cfg = load_config(write(tmp_path, "teacher: {engine: openai, model: m, base_url: 'http://x/v1', api_key: '${RT_TEST_KEY}'}\n"))
    assert cfg.teacher.api_key.get_secret_value() == "sk-planted-secret-123"
    dumped = json.dumps(cfg.public_dict())
    assert "sk-planted-secret-123" not in dumped and "***" in dumped
    assert "sk-planted-secret-123" not in repr(cfg)
    monkeypatch.setenv("RT_TEST_KEY", "another-key")
    assert load_config(write(tmp_path, "teacher: {engine: openai, model: m, base_url: 'http://x/v1', api_key: '${RT_TEST_KEY}'}\n")).hash == cfg.hash


def test_missing_env_var(tmp_path):
    with pytest.raises(UserError, match="environment variable RT_SURELY_UNSET is not set"):
        load_config(write(tmp_path, "output: {path: '${RT_SURELY_UNSET}'}\n"))


def test_hash_changes_with_content(tmp_path):
    a = load_config(None)
    b = load_config(None, ["chunking.size=400"])
    assert a.hash != b.hash
    assert a.section_hash("corpus") == b.section_hash("corpus")
    assert a.section_hash("chunking") != b.section_hash("chunking")


@pytest.mark.parametrize("text", ["corpus: {path: 3, bogus: 1}\n", "corpus: {path: [\n"])
def test_cli_exit_code_2_without_traceback(tmp_path, text):
    path = write(tmp_path, text)
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.generate", "--config", str(path)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ}, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("ragtune: error:") and str(path) in lines[0]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["chunking.size=-5"], "--set chunking.size=-5: chunking.size: Input should be greater than 0"),
        (["chunking={size: -5}"], "--set chunking={size: -5}: chunking.size: Input should be greater than 0"),
        (["chunking.overlap=900"], "c.yaml with --set chunking.overlap=900: chunking: Value error, overlap (900)"),
        (["train.use_gpu=maybe"], "--set train.use_gpu=maybe: train.use_gpu: Input should be 'auto', True or False"),
    ],
)
def test_an_error_in_an_override_names_the_override(tmp_path, overrides, expected):
    with pytest.raises(UserError) as info:
        load_config(write(tmp_path, "chunking: {size: 500, overlap: 100}\n"), overrides)
    assert expected in str(info.value)
    with pytest.raises(UserError, match=r"c.yaml: chunking.size: Input should be greater than 0"):
        load_config(write(tmp_path, "chunking: {size: -5}\n"), ["chunking.overlap=0"])  # the file's mistake


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path, monkeypatch):
    for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "JUDGE_BASE_URL", "JUDGE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_config(path)
    assert cfg.train.use_gpu in ("auto", True)  # never a CPU-only setting that a GPU cluster would ignore
    if path.name == "openai.yaml":
        assert (cfg.teacher.engine, cfg.judge.engine) == ("openai", "openai")
        assert cfg.teacher.base_url == cfg.judge.base_url == "http://localhost:8000/v1"
        assert cfg.teacher.api_key.get_secret_value() == "EMPTY"
    if path.name == "vllm_cluster.yaml":
        assert cfg.teacher.engine == "vllm" and cfg.teacher.engine_kwargs["tensor_parallel_size"] >= 1
        assert cfg.train.use_gpu is True and cfg.train.strategy == "fsdp"


def test_openai_config_takes_its_server_from_the_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.example.com/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    cfg = load_config(ROOT / "configs" / "openai.yaml")
    assert cfg.teacher.base_url == "https://api.example.com/v1"
    assert cfg.teacher.api_key.get_secret_value() == "sk-from-env"
    assert "sk-from-env" not in json.dumps(cfg.public_dict())
