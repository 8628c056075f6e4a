"""The bad-input matrix of docs/bad_input.md: each row runs a job's CLI as a separate process.

Each must print exactly one `ragtune: error: ...` line naming the problem, no
traceback and hardly anything else (no Ray output), exit 2, and leave nothing
that looks finished or published, and no empty output folder. A key
planted in the environment and the config must appear in no output, no run
folder and no Ray session log. Rows that fail after Ray starts use one Ray
head started for this module (RAY_ADDRESS), so no row pays for a Ray start.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from tests.conftest import free_port
from tests.support.runs import JOURNAL, job, journal_corpus, sets, user_error_lines

pytestmark = pytest.mark.slow

PLANTED = f"sk-planted-{uuid.uuid4().hex}"
RAY_57733 = "has constructor arguments in the object store and max_restarts > 0"


@dataclass
class Row:
    job: str
    args: list[str]
    expect: str  # a fragment of the one error line
    env: dict[str, str] = field(default_factory=dict)
    drop_env: tuple[str, ...] = ()
    # Paths (relative to the row's folder) that must not exist afterwards: by default the run
    # folder itself (a job that fails before writing anything leaves no empty folder).
    absent: tuple[str, ...] = ("run",)


def base_config(d: Path, **sections: dict) -> str:
    """A config file with the planted key in it, through ${ENV} interpolation as users write secrets."""
    import yaml

    cfg = {"output": {"path": str(d / "run")}, "chunking": {"size": 200, "overlap": 40},
           "teacher": {"engine": "none", "api_key": "${RAGTUNE_PLANTED_KEY}"}, **sections}
    path = d / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def generate_on(corpus: Path | str, d: Path, *more: str, **sections: dict) -> list[str]:
    return ["--config", base_config(d, **sections), *sets(f"corpus.path={corpus}", *more)]


def folder(d: Path, files: dict[str, bytes]) -> Path:
    c = d / "corpus"
    c.mkdir()
    for name, data in files.items():
        (c / name).write_bytes(data)
    return c


def huge(d: Path) -> Path:
    c = d / "corpus"
    c.mkdir()
    with open(c / "one-line.txt", "w") as f:
        f.writelines("word " * 209_716 for _ in range(50))  # 50 MiB, no newline
    return c


def bad_config(d: Path, text: str) -> list[str]:
    (d / "config.yaml").write_text(text)
    return ["--config", str(d / "config.yaml")]


def unfinished_run(d: Path) -> list[str]:
    """A run stopped after ingest (a real one: generate --until ingest), published to a folder."""
    r = job("generate", *generate_on(journal_corpus(d / "corpus", 2), d), "--until", "ingest",
            env={**os.environ, "RAGTUNE_PLANTED_KEY": PLANTED})
    assert r.returncode == 0, r.stderr[-2000:]
    return ["--run", str(d / "run"), "--to", str(d / "published")]


def dataset_with_qa(d: Path) -> str:
    """A folder with a valid (one-row) qa train split, as a published dataset has."""
    (d / "data" / "qa").mkdir(parents=True)
    msgs = [{"role": "user", "content": "Where did I run?"}, {"role": "assistant", "content": "Along the river."}]
    row = {f.name: None for f in schemas.schema_of("qa")}
    row.update(id="q1", kind="local", question="Where did I run?", answer="Along the river.", messages=msgs, split="train")
    pq.write_table(schemas.validate("qa", pa.Table.from_pylist([row])), d / "data" / "qa" / "train-00000-of-00001.parquet")
    return str(d / "data")


def no_entities(d: Path) -> Path:
    text = ("it rained again today and the kettle was slow. " * 6 + "\n\n").encode()
    return folder(d, {f"note-{i}.txt": text.replace(b"today", f"on day {i}".encode()) for i in range(3)})


def jsonl(d: Path) -> Path:
    return folder(d, {"notes.jsonl": b'{"text": "A fine note about the garden and the river path today."}\n{"text": "unclosed\n'})


def other_fields(d: Path) -> Path:
    return folder(d, {"notes.jsonl": b'{"body": "A fine note about the garden and the river path today.", "when": "2024-05-01"}\n'
                                     b'{"body": "Another note, about the harbour and the mill at night.", "when": "2024-05-02"}\n'})


ROWS: dict[str, Callable[[Path, str], Row]] = {
    "missing path": lambda d, s3: Row("generate", generate_on(d / "nope", d), "no such file or folder"),
    "empty folder": lambda d, s3: Row("generate", generate_on(folder(d, {}), d), "no files found"),
    "binary file": lambda d, s3: Row("generate", generate_on(folder(d, {"blob.txt": bytes(range(256)) * 64}), d),
                                     "no usable documents (binary 1)"),
    "non-UTF-8 file": lambda d, s3: Row("generate", generate_on(folder(d, {"x.txt": b"caf\xe9 \xff\xfe na\xefve " * 20}), d),
                                        "no usable documents (not_utf8 1)"),
    "50 MB single line": lambda d, s3: Row("generate", generate_on(huge(d), d), "no usable documents (too_large 1)"),
    "malformed JSONL line (on_error: fail)": lambda d, s3: Row(
        "generate", generate_on(jsonl(d), d, "corpus.on_error=fail"), "malformed jsonl (corpus.on_error=fail)"),
    "bad YAML": lambda d, s3: Row("generate", bad_config(d, "corpus: {path: [\n"), "bad YAML"),
    "unknown config key": lambda d, s3: Row("generate", bad_config(d, "corpus: {pth: examples/journal}\n"),
                                            "corpus.pth: unknown key"),
    "wrong type": lambda d, s3: Row("generate", bad_config(d, "chunking: {size: many}\n"),
                                    "chunking.size: Input should be a valid integer"),
    "missing S3 bucket": lambda d, s3: Row("generate", generate_on("s3://no-such-bucket-9/corpus", d),
                                           "bucket 'no-such-bucket-9' does not exist", env={"AWS_ENDPOINT_URL": s3}),
    "no S3 credentials": lambda d, s3: Row(
        "generate", generate_on("s3://some-bucket/corpus", d), "no valid S3 credentials",
        env={"AWS_ENDPOINT_URL": s3, "AWS_SHARED_CREDENTIALS_FILE": str(d / "none"), "AWS_CONFIG_FILE": str(d / "none"),
             "AWS_EC2_METADATA_DISABLED": "true"},
        drop_env=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")),
    "unreachable engine URL": lambda d, s3: Row(
        "generate", generate_on(journal_corpus(d / "corpus", 2), d, "teacher.engine=openai", "teacher.model=m",
                                f"teacher.base_url=http://127.0.0.1:{free_port()}/v1", "teacher.timeout_s=5"),
        "openai engine: cannot reach"),
    "missing model path": lambda d, s3: Row(
        "finetune", ["--config", base_config(d), *sets(f"train.dataset={dataset_with_qa(d)}", f"train.model={d / 'no-model'}",
                                                       f"train.output={d / 'student'}")],
        "no-model", absent=("student",)),
    "records without the text field": lambda d, s3: Row(
        "generate", generate_on(other_fields(d), d),
        "no usable documents (missing_text 2); corpus.text_field is 'text', the records have: body, when"),
    "an override out of range": lambda d, s3: Row(
        "generate", generate_on(JOURNAL, d, "chunking.size=-5"), "--set chunking.size=-5: chunking.size: Input should be greater than 0"),
    "GPUs the cluster lacks": lambda d, s3: Row(
        "finetune", ["--config", base_config(d), *sets(f"train.dataset={dataset_with_qa(d)}", "train.model=owner/student",
                                                       "train.use_gpu=true", f"train.output={d / 'student'}")],
        "train.use_gpu is true but the Ray cluster has no GPU", absent=("student",)),
    "publishing an unfinished run": lambda d, s3: Row(
        "publish", unfinished_run(d), "incomplete run: stage 'chunk' has not finished", absent=("published", "run/README.md")),
    # The graph stage finishes (an empty graph is its true result); synthesis refuses to make an empty dataset.
    "a corpus with no entities": lambda d, s3: Row("generate", generate_on(no_entities(d), d), "graph has no entities",
                                                   absent=("run/_stages/synthesis.json", "run/qa", "run/README.md")),
}


@pytest.fixture(scope="module")
def outputs():
    """Every row's stdout and stderr, for the planted-key check at the end."""
    return []


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input_row(name, cluster, s3_server, tmp_path, outputs, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)  # a row's set-up job (unfinished_run) uses the module's Ray too
    row = ROWS[name](tmp_path, s3_server)
    env = {**cluster.env, "RAGTUNE_PLANTED_KEY": PLANTED, "OPENAI_API_KEY": PLANTED, **row.env}
    for var in row.drop_env:
        env.pop(var, None)
    r = job(row.job, *row.args, env=env, timeout=600)
    outputs.append((name, r.stdout + r.stderr, tmp_path))
    errors = user_error_lines(r.stderr)
    assert r.returncode == 2, f"exit {r.returncode}: {r.stderr[-3000:]}"
    assert len(errors) == 1 and row.expect in errors[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    # Before the error only ragtune's own lines (stages started, counts, progress): no Ray output, except
    # the one line Ray 2.60's driver logs when a Ray Data actor pool starts (ray-project/ray#57733).
    others = [line for line in r.stderr.splitlines() if not line.startswith("ragtune: ") and RAY_57733 not in line]
    assert not others, r.stderr[-3000:]
    for rel in row.absent:
        assert not (tmp_path / rel).exists(), f"{rel} was left behind"


def test_planted_key_appears_nowhere(cluster, outputs):
    """After the rows: no output, no file they wrote, no Ray session log holds the key."""
    assert len(outputs) == len(ROWS), "run the whole module"
    needle = PLANTED.encode()
    for name, text, d in outputs:
        assert PLANTED not in text, name
        for p in d.rglob("*"):
            if p.is_file() and p.stat().st_size < 5_000_000:
                assert needle not in p.read_bytes(), f"{name}: {p}"
    logs = [p for p in Path(cluster.temp_dir).rglob("*") if p.is_file() and "sockets" not in p.parts]
    assert logs
    for p in logs:
        if p.stat().st_size < 50_000_000:
            assert needle not in p.read_bytes(), p
