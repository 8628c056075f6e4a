"""Stages and the scheduler: what a stage declares, when it runs, what it leaves behind.

A `Stage` declares what it reads and writes (tables), the upstream stages whose output it
reads (`inputs`), the config sections its output depends on and the engine roles it calls;
the preflight checks those roles' engines before the first stage runs, and `plan` checks
that every table a stage reads is written by a stage upstream of it.

The skip rule, in one place (`plan`): a stage runs when forced, when its marker is missing
or holds another fingerprint, or when a stage upstream of it runs. The fingerprint hashes
ragtune's version, the stage's config sections, its upstream stages' fingerprints and any
extra material (for ingest, a listing of the input files). A stage deletes its marker before
it starts and writes it after its tables are committed, so a crash never leaves a stage that
looks finished. The marker keeps what was hashed (the extra material as a hash), so that a
run can be checked from its own files (`check_finished`) with no access to its corpus.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from factory import __version__, progress
from factory.errors import UserError
from factory.pipeline.folder import Run
from factory.pipeline.manifest import update_manifest

logger = logging.getLogger(__name__)


@dataclass
class StageRecord:
    """What a stage reports: counts, drops by reason, tokens, extra statistics."""

    name: str
    rows_in: int = 0
    rows_out: int = 0
    drops: Counter = field(default_factory=Counter)
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.drops[reason] += n

    def add_tokens(self, engine_model: str, input_tokens: int, output_tokens: int, calls: int) -> None:
        t = self.tokens.setdefault(engine_model, {"input": 0, "output": 0, "calls": 0})
        t["input"] += input_tokens
        t["output"] += output_tokens
        t["calls"] += calls

    def summary(self) -> str:
        drops = ", ".join(f"{k} {v}" for k, v in sorted(self.drops.items())) or "none"
        return (
            f"[{self.name}] {self.rows_in} rows in -> {self.rows_out} rows out; "
            f"drops: {drops}; {self.seconds:.1f} s"
        )


@dataclass(frozen=True)
class Stage:
    """One step of a job: `fn(run, rec)` reads `reads` from the run folder and writes `writes`."""

    name: str
    fn: Callable[[Run, StageRecord], None]
    sections: tuple[str, ...] = ()  # config sections its output depends on
    inputs: tuple[str, ...] = ()  # upstream stages whose outputs it reads
    reads: tuple[str, ...] = ()  # tables
    writes: tuple[str, ...] = ()  # tables
    roles: tuple[str, ...] = ()  # engine roles it calls where they are configured (preflight checks them)
    # Extra fingerprint material, e.g. a listing of the input files.
    fingerprint_extra: Callable[[Run], str] | None = None


@dataclass(frozen=True)
class Step:
    """A stage as planned: its fingerprint now, what was hashed, and whether it runs."""

    stage: Stage
    material: dict[str, Any]
    fingerprint: str
    runs: bool


def _material(run: Run, stage: Stage, upstream: dict[str, str | None]) -> dict[str, Any]:
    extra = stage.fingerprint_extra(run) if stage.fingerprint_extra else None
    return {
        "stage": stage.name,
        "version": __version__,
        "sections": list(stage.sections),
        "config": run.cfg.section_hash(*stage.sections),
        "upstream": upstream,
        "extra": hashlib.sha256(extra.encode()).hexdigest()[:16] if extra is not None else None,
    }


def _fingerprint(material: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def plan(run: Run, stages: Iterable[Stage], force: bool = False) -> list[Step]:
    """Each stage's fingerprint, and whether it runs (the skip rule above).

    An upstream stage that is planned too counts with the fingerprint it will have once it is
    up to date; one outside `stages` with the fingerprint of its marker.
    """
    stages = list(stages)
    _check_declarations(stages)
    steps: dict[str, Step] = {}
    for stage in stages:
        upstream = {}
        for name in stage.inputs:
            if name in steps:
                upstream[name] = steps[name].fingerprint
            else:
                done = run.marker(name)
                upstream[name] = done["fingerprint"] if done else None
        material = _material(run, stage, upstream)
        fingerprint = _fingerprint(material)
        done = run.marker(stage.name)
        runs = (force or done is None or done.get("fingerprint") != fingerprint
                or any(steps[n].runs for n in stage.inputs if n in steps))
        steps[stage.name] = Step(stage, material, fingerprint, runs)
    return list(steps.values())


def _check_declarations(stages: list[Stage]) -> None:
    """Every table a stage reads is written by a stage upstream of it (when the writer is among `stages`)."""
    writer = {table: s.name for s in stages for table in s.writes}
    upstream: dict[str, set[str]] = {}
    for s in stages:
        upstream[s.name] = set(s.inputs).union(*(upstream.get(i, set()) for i in s.inputs))
        for table in s.reads:
            if table in writer and writer[table] not in upstream[s.name]:
                raise ValueError(f"stage {s.name} reads {table}, written by {writer[table]}, which is not upstream of it")


def run_stages(run: Run, stages: Iterable[Stage], force: bool = False, until: str | None = None,
               steps: list[Step] | None = None) -> dict[str, StageRecord]:
    """Run every stage that is not up to date, in order, up to `until` (all of them with `force`).

    `stages` is the whole job: the manifest records their order, which is what a complete run has.
    `steps`, when given, is the `plan` already made for them (the preflight's).
    """
    stages = list(stages)
    steps = steps if steps is not None else plan(run, stages, force)
    records = {}
    for step in steps:
        if step.runs:
            records[step.stage.name] = run_stage(run, step.stage, step)
        else:
            logger.info(f"[{step.stage.name}] up to date, skipped (finished {run.marker(step.stage.name).get('finished_at')})")
        if step.stage.name == until:
            break
    if records:  # not before: a job whose first stage fails leaves no file behind
        update_manifest(run, stage_order=[s.name for s in stages])
    return records


def run_stage(run: Run, stage: Stage, step: Step | None = None) -> StageRecord:
    """Run one stage now and record it (its plan is made here when not given)."""
    step = step or plan(run, [stage], force=True)[0]
    run.remove(f"_stages/{stage.name}.json")
    rec = StageRecord(stage.name)
    start = time.perf_counter()
    logger.info(f"[{stage.name}] started")
    with progress.stage(stage.name):
        stage.fn(run, rec)
    rec.seconds = time.perf_counter() - start
    entry = {
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(rec.seconds, 3),
        "rows_in": rec.rows_in,
        "rows_out": rec.rows_out,
        "drops": dict(rec.drops),
        "tokens": rec.tokens,
        "stats": rec.stats,
    }
    run.write_json(f"_stages/{stage.name}.json", {"fingerprint": step.fingerprint, "material": step.material, **entry})
    update_manifest(run, stages={stage.name: {"fingerprint": step.fingerprint, **entry}})
    logger.info(rec.summary())
    return rec


def check_finished(run: Run, names: Iterable[str]) -> None:
    """Each stage finished, after the stages it read from, with the run's config and this ragtune
    version: read from the markers alone (no input is listed again). Raises a UserError line."""
    for name in names:
        done = run.marker(name)
        if done is None:
            raise UserError(f"{run.root}: incomplete run: stage '{name}' has not finished; run generate")
        material = done.get("material") or {}
        upstream = {up: (run.marker(up) or {}).get("fingerprint") for up in material.get("upstream", {})}
        if (not material or _fingerprint(material) != done.get("fingerprint")
                or material["version"] != __version__
                or material["config"] != run.cfg.section_hash(*material["sections"])
                or upstream != material["upstream"]):
            raise UserError(f"{run.root}: stage '{name}' is out of date with the run's config or inputs; rerun generate")
