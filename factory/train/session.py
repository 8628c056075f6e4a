"""Where a training loop runs: under Ray Train (one per worker) or alone in one process.

The loop talks to a session for its rank, device, data, checkpoints and
metrics, so the same code runs inside `TorchTrainer` and in a plain Python
process without Ray installed (`LocalSession`; the GPU benchmark does that).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

CHECKPOINT_PREFIX = "checkpoint_"


class LocalSession:
    """One process: rows from lists, checkpoints in a local folder, metrics kept in a list."""

    rank = 0
    world_size = 1

    def __init__(self, train_rows: list[dict], test_rows: list[dict] | None = None,
                 checkpoint_root: str | os.PathLike | None = None, device: str | None = None):
        self._train = train_rows
        self._test = test_rows or []
        self.root = Path(checkpoint_root) if checkpoint_root else None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.history: list[dict] = []

    def train_rows(self, epoch: int) -> Iterable[dict]:
        return self._train

    def test_rows(self) -> Iterable[dict]:
        return self._test

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        found = sorted(self.root.glob(f"{CHECKPOINT_PREFIX}*")) if self.root and self.root.exists() else []
        yield str(found[-1]) if found else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        self.history.append(dict(metrics))
        if checkpoint_dir and self.root:
            dest = self.root / f"{CHECKPOINT_PREFIX}{metrics['step']:08d}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(checkpoint_dir, dest)


class RaySession:
    """Inside a Ray Train worker: dataset shards, `ray.train.report`, the run's checkpoints.

    Rank 0 also sends each step's metrics to `progress` (an actor the driver reads its progress
    line from: what a worker prints reaches the driver's console only with ray.progress on).
    """

    def __init__(self, progress: Any = None) -> None:
        import ray.train
        import ray.train.torch

        self._train_api = ray.train
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._train = ray.train.get_dataset_shard("train")
        self._test = ray.train.get_dataset_shard("test")
        self._progress = progress if self.rank == 0 else None

    def train_rows(self, epoch: int) -> Iterable[dict]:
        return self._train.iter_rows()

    def test_rows(self) -> Iterable[dict]:
        return self._test.iter_rows() if self._test is not None else []

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        ckpt = self._train_api.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as path:
            yield path

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        checkpoint = None
        if checkpoint_dir:
            checkpoint = self._train_api.Checkpoint.from_directory(checkpoint_dir)
        self._train_api.report(metrics, checkpoint=checkpoint)
        if self._progress is not None and "loss" in metrics:
            self._progress.put.remote(metrics)  # fire and forget: the next step's put supersedes it


def new_checkpoint_dir() -> str:
    return tempfile.mkdtemp(prefix="ragtune-ckpt-")
