"""Connecting to Ray: the cluster a job was submitted to, or a local one; what Ray prints."""

from __future__ import annotations

import atexit
import logging
import os
from typing import Any

import ray
from ray.data._internal.execution import streaming_executor
from ray.data._internal.progress import get_progress_manager
from ray.data._internal.progress.base_progress import NoopExecutionProgressManager

from factory import progress
from factory.config import Config


def ensure_ray(cfg: Config) -> None:
    """Connect to ray.address / RAY_ADDRESS (set by `ray job submit`), else start a private local Ray.

    A job never attaches to some other local cluster it happens to find: without an address it
    starts its own, the same way on a laptop as in a test.
    """
    if not ray.is_initialized():
        _init(cfg)
    configure_data(cfg.ray.progress)


def _init(cfg: Config) -> None:
    # log_to_driver off: workers' own chatter (library progress bars, Ray Train's INFO lines,
    # shutdown tracebacks of Ray's helper actors) stays in the session's log files.
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": cfg.ray.progress}
    if cfg.ray.address:
        kwargs["address"] = cfg.ray.address
    elif not os.environ.get("RAY_ADDRESS"):
        kwargs.update(address="local", include_dashboard=cfg.ray.dashboard)
        if cfg.ray.num_cpus:
            kwargs["num_cpus"] = cfg.ray.num_cpus
        # Ray 2.60 turns token authentication on for a new local cluster (it listens on the node's
        # address, not only loopback) and warns that it did, on every start. Keep Ray's choice
        # (RAY_AUTH_MODE=disabled still turns it off), without the warning.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.init(**kwargs)
    if not cfg.ray.progress:
        # Ray's own exit hook waits 0.5 s for workers' log lines to reach the console; with
        # log_to_driver off there are none. Ours runs first (atexit is last in, first out).
        atexit.register(ray.shutdown)


def configure_data(ray_progress: bool = False) -> None:
    """Ray Data settings every job relies on, also in a process whose Ray someone else started."""
    ctx = ray.data.DataContext.get_current()
    # One summary line per stage is ours to print; Ray's per-operator stats are noise here.
    ctx.print_on_execution_start = False
    # Same input, same row order in every output file: reruns are byte-comparable.
    ctx.execution_options.preserve_order = True
    # Ray 2.60's datasource V2 starts FooterReader actors (fresh worker processes) for every
    # read_parquet and kills them after: 5-10 s per table read on 2 CPUs, 0.4 s with V1.
    ctx.use_datasource_v2 = False
    # A UserError raised in a UDF reaches the driver as itself (errors.find_user_error), not as a
    # UserCodeException whose cause (the UserError) does not survive pickling.
    ctx.raise_original_map_exception = True
    # Carried to Ray Train's dataset coordinators too, which then print no progress bars of their own.
    ctx.enable_progress_bars = ray_progress
    _ray_data_console(logging.INFO if ray_progress else logging.WARNING)
    _driver_progress(quiet=not ray_progress)


def _ray_data_console(level: int) -> None:
    """Ray Data logs each execution's start and end at INFO on the console; keep its warnings, but
    one: "no available CPUs" is read from an instant's resource view at each execution's start, and
    while the step before releases its tasks that view can say zero (a job's log must not say it
    will hang when it will not; a stage that really waits shows in its progress line)."""
    for handler in logging.getLogger("ray.data").handlers:
        if handler.name == "console":
            handler.setLevel(level)
    dataset = logging.getLogger("ray.data.dataset")
    if not any(isinstance(f, _NoCpuWarning) for f in dataset.filters):
        dataset.addFilter(_NoCpuWarning())


class _NoCpuWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "does not have any available CPUs" not in record.getMessage()


class RayDataProgress(NoopExecutionProgressManager):
    """Ray Data's progress manager for one execution, feeding one `factory.progress` line."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)  # gives all-to-all operators the sub-progress bars they expect
        self.bar = progress.Progress(progress.current_label(), unit="rows")

    def update_total_progress(self, new_rows: int, total_rows: int | None) -> None:
        self.bar.advance(new_rows, total_rows or None)

    def close_with_finishing_description(self, desc: str, success: bool) -> None:
        self.bar.close()


def _quiet_progress_manager(ctx: Any, dataset_id: str, topology: Any, verbose: bool) -> RayDataProgress:
    return RayDataProgress(dataset_id, topology, False, False)


def _driver_progress(quiet: bool) -> None:
    """Show every Ray Data execution on this driver as a ragtune progress line (quiet), or as Ray's bars.

    Ray Data has no public progress hook; its executor picks a progress manager through a
    module-level factory (Ray 2.60), which this swaps.
    """
    streaming_executor.get_progress_manager = _quiet_progress_manager if quiet else get_progress_manager


def cluster_cpus() -> int:
    return int(ray.cluster_resources().get("CPU", 1))


def cpu_actors(cfg: Config) -> int:
    """Actor-pool size for CPU stages: leave one CPU free so write tasks are never starved."""
    if cfg.ray.cpu_actors:
        return cfg.ray.cpu_actors
    return max(1, cluster_cpus() - 1)


def block_count(rows: int, min_rows: int, per_cpu: int = 4) -> int:
    """Blocks for `rows` rows of CPU work on Ray: a few per CPU (one each would leave CPUs idle at
    the tail), none smaller than `min_rows` (a task costs more than a small block's work)."""
    return max(1, min(rows // min_rows, per_cpu * cluster_cpus()))
