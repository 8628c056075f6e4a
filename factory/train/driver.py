"""Ray side of the finetune job: data through Ray Data, then a `TorchTrainer`."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
from pathlib import Path
from typing import Any, Iterator

import ray
import ray.data
import ray.train
from ray.train.torch import TorchTrainer

from factory import progress
from factory.cluster import cpu_actors, ensure_ray
from factory.config import Config
from factory.errors import UserError
from factory.pipeline import Run
from factory.storage import arrow_filesystem, check_writable, filesystem, is_remote, join
from factory.train.data import Tokenize, pack_batch
from factory.train.loop import Plan, run_training
from factory.train.session import RaySession

logger = logging.getLogger(__name__)

# Samples packed together come from windows of this many shuffled rows.
PACK_WINDOW = 1024


def student_model(cfg: Config) -> str:
    model = cfg.train.model or (cfg.student.model if cfg.student else None)
    if not model:
        raise UserError(f"{cfg._source}: train.model: set the student model (a local path or a Hub id)")
    if model.startswith((".", "/", "~")) and not Path(model).expanduser().exists():
        raise UserError(f"{cfg._source}: train.model: folder {model} does not exist")
    return model


def tokenized(cfg: Config, run: Run, model: str) -> ray.data.Dataset:
    """qa (both splits), shuffled, tokenized with the student's chat template in an actor pool."""
    t = cfg.train
    ds = run.read_ray("qa").select_columns(["messages", "split"]).random_shuffle(seed=t.seed)
    ds = ds.map_batches(
        Tokenize, fn_constructor_args=(model, min(t.max_seq_len, t.batch_tokens)), batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=cpu_actors(cfg)),
    )
    return ds.materialize()


def micro_batches(cfg: Config, samples: ray.data.Dataset, split: str) -> ray.data.Dataset:
    """One split's samples packed (or grouped for padding) into micro-batch rows."""
    ds = samples.filter(expr=f"split == '{split}'")
    ds = ds.map_batches(pack_batch, fn_kwargs={"batch_tokens": cfg.train.batch_tokens, "packing": cfg.train.packing},
                        batch_size=PACK_WINDOW, batch_format="numpy")
    return ds.materialize()


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker entry."""
    run_training(config["cfg"].train, config["plan"], RaySession(config["progress"]), config["cfg"].s3)


def scaling(cfg: Config) -> ray.train.ScalingConfig:
    """Workers on GPUs or CPUs as train.use_gpu says, checked against the cluster's nodes now:
    a demand no node can meet is one line here, not a Ray Train that waits for it forever."""
    t = cfg.train
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    gpus = sum(n.get("GPU", 0) for n in nodes)
    use_gpu = gpus > 0 if t.use_gpu == "auto" else t.use_gpu
    if t.use_gpu is True and not gpus:
        raise UserError("train.use_gpu is true but the Ray cluster has no GPU; set train.use_gpu: auto "
                        "(GPUs when there are any, else CPU) or false")
    if t.use_gpu == "auto" and not gpus:
        logger.info("[finetune] no GPU in the Ray cluster: training on CPU (train.use_gpu: auto)")
    # What Ray Train asks per worker: resources_per_worker, else one GPU (use_gpu) or one CPU.
    need = {r: amount for r, amount in t.resources_per_worker.items() if amount} or ({} if use_gpu else {"CPU": 1.0})
    if use_gpu:
        need.setdefault("GPU", 1.0)
    fits = sum(min(int(n.get(r, 0) // amount) for r, amount in need.items()) for n in nodes)
    if fits < t.num_workers:
        have = ", ".join(f"{r} {sum(n.get(r, 0) for n in nodes):g}" for r in need)
        raise UserError(f"train: {t.num_workers} workers of {_resources(need)} do not fit the Ray cluster "
                        f"({have} on {len(nodes)} node{'s' * (len(nodes) != 1)}; {fits} fit); lower train.num_workers "
                        "or train.resources_per_worker")
    return ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=use_gpu,
                                   resources_per_worker=t.resources_per_worker or None)


def _resources(need: dict[str, float]) -> str:
    return "{" + ", ".join(f"{r}: {amount:g}" for r, amount in need.items()) + "}"


@ray.remote(num_cpus=0)
class TrainProgress:
    """Rank 0's latest step metrics, read by the driver for its progress line."""

    def __init__(self) -> None:
        self.latest: dict[str, Any] | None = None

    def put(self, metrics: dict[str, Any]) -> None:
        self.latest = metrics

    def get(self) -> dict[str, Any] | None:
        return self.latest


@contextlib.contextmanager
def training_progress(board: Any, total: int, every: int) -> Iterator[None]:
    """While training runs: a line (step, loss, tokens/s, ETA) every `every` steps, in place on a terminal."""
    stop = threading.Event()
    bar = progress.Progress("finetune", total=total, unit="steps", every=every, interval_s=None, start=None)

    def poll() -> None:
        while not stop.wait(1.0):
            try:
                m = ray.get(board.get.remote(), timeout=10)
            except Exception:  # the run is ending; its result, not the progress line, reports why
                return
            if m:
                fields = {"loss": round(m["loss"], 4), "tokens/s": int(m["tokens_per_s"])}
                if m.get("eval_loss") is not None:
                    fields["eval loss"] = round(m["eval_loss"], 4)
                bar.update(m["step"], fields=fields)

    thread = threading.Thread(target=poll, name="ragtune-train-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=15)
        bar.close()


def storage(cfg: Config) -> tuple[str, Any]:
    """Ray Train's storage_path and filesystem for train.output (local or s3:// with our credentials)."""
    fs, path = check_writable(cfg.train.output, cfg.s3)
    if is_remote(cfg.train.output):
        return path, arrow_filesystem(fs)
    return path, None


def finetune(cfg: Config) -> dict[str, Any]:
    """Train (or resume) the student; returns the final metrics (step, losses, export paths)."""
    from transformers import AutoTokenizer

    t = cfg.train
    model = student_model(cfg)
    dataset = t.dataset or cfg.output.path
    run = Run(cfg, root=dataset, read_only=True)
    if not run.has_table("qa", "train"):
        raise UserError(f"{dataset}: no qa/train table (run `ragtune generate` or point train.dataset at a published dataset)")
    ensure_ray(cfg)
    scaling_config = scaling(cfg)
    pad_id = AutoTokenizer.from_pretrained(model).pad_token_id or 0
    with progress.stage("finetune"):
        samples = tokenized(cfg, run, model)
        train = micro_batches(cfg, samples, "train")
        test = micro_batches(cfg, samples, "test")
    rows = train.count()
    steps_per_epoch = rows // t.num_workers
    if steps_per_epoch == 0:
        raise UserError(f"{dataset}: {rows} training micro-batches for {t.num_workers} workers; lower train.num_workers or train.batch_tokens")
    total = t.max_steps or math.ceil(t.epochs * steps_per_epoch)
    storage_path, storage_fs = storage(cfg)
    plan = Plan(model=model, total_steps=total, steps_per_epoch=steps_per_epoch,
                export_to=join(t.output, t.name, "export"), pad_id=pad_id)
    logger.info(f"[finetune] {rows} train micro-batches ({steps_per_epoch} steps/epoch on {t.num_workers} "
               f"{'GPU' if scaling_config.use_gpu else 'CPU'} worker{'s' * (t.num_workers != 1)}), {test.count()} test; "
               f"training to step {total}; checkpoints in {join(t.output, t.name)}")
    board = TrainProgress.remote()
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"cfg": cfg, "plan": plan, "progress": board},
        scaling_config=scaling_config,
        run_config=ray.train.RunConfig(
            name=t.name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints),
            # Ray Train's INFO lines (each report as a raw dict, worker-group start-up) only with ray.progress.
            logging_config=ray.train.LoggingConfig(log_level="INFO" if cfg.ray.progress else "WARNING"),
        ),
        datasets={"train": train, "test": test},
    )
    with training_progress(board, total, t.log_every):
        trainer.fit()
    return read_summary(plan.export_to, cfg)


def read_summary(export_to: str, cfg: Config) -> dict[str, Any]:
    """The final metrics rank 0 wrote next to the export (Ray's result only keeps checkpointed metrics)."""
    fs, path = filesystem(join(export_to, "summary.json"), cfg.s3)
    with fs.open(path, "r") as f:
        return json.load(f)
