"""`preflight`: check every engine the stages about to run will call, before the first of them runs.

`run_llm` checks its engine again at each call; this makes a bad base_url, key or
model folder fail at job start instead of after the stages before its first use.
Which stages run is the scheduler's plan; which roles each calls, its `Stage.roles`.
"""

from __future__ import annotations

from typing import Iterable

from factory.config import Config
from factory.engines import enabled
from factory.pipeline import Step


def preflight(cfg: Config, steps: Iterable[Step]) -> None:
    """`backend.preflight` once for each configured LLM role a stage that runs calls (raises UserError)."""
    from factory.engines.base import backend

    checked: set[str] = set()
    for step in steps:
        if not step.runs:
            continue
        for role in step.stage.roles:
            role_cfg = getattr(cfg, role)
            if role not in checked and enabled(role_cfg):
                backend(role_cfg.engine).preflight(role_cfg)
                checked.add(role)
