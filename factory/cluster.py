"""Connecting to Ray: the cluster a job was submitted to, or a local one."""

from __future__ import annotations

import logging
import os

import ray

from factory.config import Config


def ensure_ray(cfg: Config) -> None:
    """Connect to RAY_ADDRESS / a running cluster, else start a local Ray.

    Under `ray job submit` the driver finds its cluster through RAY_ADDRESS;
    on a laptop with no cluster `ray.init()` starts one in-process.
    """
    if not ray.is_initialized():
        _init(cfg)
    configure_data()


def _init(cfg: Config) -> None:
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
    if cfg.ray.address:
        kwargs["address"] = cfg.ray.address
    if not cfg.ray.address and not os.environ.get("RAY_ADDRESS"):
        # Only a local start takes these; ray.init rejects them when connecting to a cluster.
        kwargs["include_dashboard"] = cfg.ray.dashboard
        if cfg.ray.num_cpus:
            kwargs["num_cpus"] = cfg.ray.num_cpus
    ray.init(**kwargs)
    ray.data.DataContext.get_current().enable_progress_bars = True


def configure_data() -> None:
    """Ray Data settings every job relies on, also in a process whose Ray someone else started."""
    ctx = ray.data.DataContext.get_current()
    # One summary line per stage is ours to print; Ray's per-operator stats are noise here.
    ctx.print_on_execution_start = False
    # Same input, same row order in every output file: reruns are byte-comparable.
    ctx.execution_options.preserve_order = True


def cpu_actors(cfg: Config) -> int:
    """Actor-pool size for CPU stages: leave one CPU free so write tasks are never starved."""
    if cfg.ray.cpu_actors:
        return cfg.ray.cpu_actors
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, cpus - 1)
