"""Relative paths in a config, made absolute once at job start, before Ray starts.

A job's driver, Ray Data tasks and Ray Train workers run in different working directories (Ray
Train moves each worker into its run folder), so a path left relative would name a different
folder in each of them. `resolve_paths` resolves every local path of the config against the
directory the command ran in; `s3://` and other URLs, Hub ids and `auto` stay as written.

Under `ray job submit --working-dir .` the command runs in Ray's unpacked copy of the working
directory, not where `ray job submit` was typed (Ray passes that directory to no one). Relative
inputs then name the uploaded copies, which is right; a relative *output* would be written into
that temporary copy. `check_job_outputs` makes that one line of error on a cluster of several
nodes (each would get its own folder) and says where it goes on one node.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from factory.config import Config, EngineConfig
from factory.errors import UserError
from factory.storage import is_remote

logger = logging.getLogger(__name__)

# Values that are not paths.
KEYWORDS = {"auto", "default"}


def resolve(path: str, base: str) -> str:
    """`path` made absolute against `base` when it is a local path (~ expanded); URLs unchanged."""
    if is_remote(path) or path in KEYWORDS:
        return path
    local = path[len("file://"):] if path.startswith("file://") else path
    return os.path.normpath(os.path.join(base, os.path.expanduser(local)))


def resolve_model(name: str, base: str) -> str:
    """A model, adapter or tokenizer: a local folder (absolute, ./, ../, ~, or one that exists
    here) is resolved; anything else is a Hub id and stays as written."""
    if name in KEYWORDS or is_remote(name):
        return name
    if name.startswith(("/", "./", "../", "~")) or os.path.exists(os.path.join(base, name)):
        return resolve(name, base)
    return name


def _engine(engine: EngineConfig | None, base: str) -> None:
    if engine is None:
        return
    if engine.model:
        engine.model = resolve_model(engine.model, base)
    if engine.adapter:
        engine.adapter = resolve_model(engine.adapter, base)


def resolve_paths(cfg: Config, base: str | None = None) -> Config:
    """Make every local path in `cfg` absolute against `base` (default: the current directory)."""
    base = os.path.abspath(base or os.getcwd())
    hf_corpus = cfg.corpus.format == "hf" or cfg.corpus.path.startswith("hf://")
    cfg.corpus.path = resolve_model(cfg.corpus.path, base) if hf_corpus else resolve(cfg.corpus.path, base)
    cfg.chunking.tokenizer = resolve_model(cfg.chunking.tokenizer, base)
    cfg.output.path = resolve(cfg.output.path, base)
    t = cfg.train
    t.output = resolve(t.output, base)
    if t.dataset:
        t.dataset = resolve(t.dataset, base)
    if t.model:
        t.model = resolve_model(t.model, base)
    for engine in (cfg.teacher, cfg.judge, cfg.student, *cfg.evaluate.engines.values()):
        _engine(engine, base)
    e = cfg.evaluate
    for key in ("run", "output", "benchmark_file"):
        if getattr(e, key):
            setattr(e, key, resolve(getattr(e, key), base))
    e.answer_files = {name: resolve(path, base) for name, path in e.answer_files.items()}
    return cfg


def ray_job_copy() -> str | None:
    """The folder of Ray's unpacked working-dir copy when this is a `ray job submit` driver running in it."""
    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not job:
        return None
    try:
        uploaded = json.loads(job).get("runtime_env", {}).get("working_dir")
    except ValueError:
        return None
    return os.getcwd() if uploaded else None


def check_job_outputs(cfg: Config, *keys: str) -> None:
    """Under `ray job submit --working-dir`, outputs (dotted `keys` of `cfg`) that were relative
    would be written into Ray's temporary copy: an error on several nodes, a notice on one."""
    copy = ray_job_copy()
    if copy is None:
        return
    inside = [(key, value) for key in keys if (value := _get(cfg, key)) and _under(value, copy)]
    if not inside:
        return
    import ray

    from factory.cluster import ensure_ray

    ensure_ray(cfg)  # a submitted job's cluster is already up: this only connects
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    key, value = inside[0]
    relative = os.path.relpath(value, copy)
    if nodes > 1:
        raise UserError(f"{key}: '{relative}' is a relative local path, and under `ray job submit` on a cluster of "
                        f"{nodes} nodes it would be a different temporary folder on each node; use shared storage "
                        f"(--set {key}=s3://bucket/prefix) or an absolute path every node mounts")
    for key, value in inside:
        logger.info(f"notice: {key} '{os.path.relpath(value, copy)}' is relative, so it is written into Ray's copy of the "
                   f"working dir, {value}; pass an absolute path (--set {key}=$PWD/{os.path.relpath(value, copy)}) to write "
                   "it where you ran `ray job submit`")


def _get(cfg: Config, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _under(path: str, folder: str) -> bool:
    return not is_remote(path) and os.path.commonpath([os.path.abspath(path), folder]) == folder
