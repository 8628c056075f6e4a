"""Shared fixtures: a real local Ray, a real S3 server on loopback, a tiny local Llama."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JOURNAL = ROOT / "examples" / "journal"

# Before Ray starts, so its workers inherit them: no auth token files, fake S3 keys.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip themselves where torch sees no CUDA device."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        import torch

        if not torch.cuda.is_available():
            for item in gpu:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _temp_dir=str(tmp_path_factory.mktemp("ray")),
            logging_level="WARNING",
        )
    ray.data.DataContext.get_current().enable_progress_bars = False
    from factory.cluster import configure_data

    configure_data()  # what ensure_ray sets, for tests that call stages directly
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on loopback; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    yield endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket on the loopback S3 server; yields (endpoint, bucket name)."""
    import boto3

    name = "t-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40].strip("-")
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    yield s3_server, name


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    sys.path.insert(0, str(ROOT))
    from examples.tiny_student import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def journal() -> Path:
    return JOURNAL


@pytest.fixture(scope="session")
def journal_chunks(ray_session, tmp_path_factory) -> Path:
    """A run folder with the journal's chunks and the real no-LLM graph and report stages over them;
    built once, the synthesis tests (no-LLM and scripted-LLM) start from its tables."""
    from factory.config import validate_config
    from factory.generate import STAGES
    from factory.pipeline import Run, run_stages
    from tests.support.runs import journal_chunk_table

    out = tmp_path_factory.mktemp("journal-run")
    run = Run(validate_config({"corpus": {"path": str(JOURNAL)}, "output": {"path": str(out)}, "ray": {"cpu_actors": 1}}))
    run.write_table("chunks", journal_chunk_table(run.cfg))
    run_stages(run, [s for s in STAGES if s.name in ("graph", "reports")])
    return out


@pytest.fixture(scope="module")
def cluster():
    """A separate local Ray cluster (head process, 2 CPUs) for tests that run jobs in their own processes."""
    from tests.support.ray_cluster import RayCluster

    with RayCluster(num_cpus=2) as c:
        yield c
    c.cleanup()


@pytest.fixture(autouse=True)
def _fresh_datasets_cache(tmp_path, monkeypatch):
    """A private `datasets` cache per test: its env var is read once at import, so set the
    module attribute too, or a run folder loaded earlier in the session is served again."""
    cache = str(tmp_path / "hf-cache")
    monkeypatch.setenv("HF_DATASETS_CACHE", cache)
    if "datasets" in sys.modules:
        monkeypatch.setattr(sys.modules["datasets"].config, "HF_DATASETS_CACHE", cache)
