"""`preflight_stages`: check every engine the stages about to run will call, before the first of them runs.

`run_llm` checks its engine again at each call; this makes a bad base_url, key or
model folder fail at job start instead of after the stages before its first use.
"""

from __future__ import annotations

from typing import Any, Iterable

from factory.config import EngineConfig
from factory.provenance import ROLES


def preflight_stages(run: Any, stages: Iterable[Any], force: bool = False) -> None:
    """`backend.preflight` for each LLM role a stage that will run depends on (raises UserError)."""
    from factory.engines.base import backend

    stages = list(stages)
    # A stage calls the roles whose config it is fingerprinted on (Stage.sections), unless that role is rule-based.
    uses = {s.name: {r for r in s.sections if r in ROLES and _llm(getattr(run.cfg, r))} for s in stages}
    if not any(uses.values()):
        return  # no LLM anywhere: nothing to check, and no fingerprint (input listing) to compute
    checked: set[str] = set()
    for stage in stages_to_run(run, stages, force):
        for role in sorted(uses[stage.name] - checked):
            cfg = getattr(run.cfg, role)
            backend(cfg.engine).preflight(cfg)
            checked.add(role)


def _llm(cfg: EngineConfig | None) -> bool:
    return cfg is not None and cfg.engine != "none"


def stages_to_run(run: Any, stages: list[Any], force: bool) -> list[Any]:
    """The stages `run.run_stages` will run: stale ones and everything downstream of them."""
    stale: set[str] = set()
    for stage in stages:
        if force or stale.intersection(stage.inputs):
            stale.add(stage.name)
            continue
        done = run.marker(stage.name)
        if not done or done.get("fingerprint") != run.fingerprint(stage):
            stale.add(stage.name)
    return [s for s in stages if s.name in stale]
