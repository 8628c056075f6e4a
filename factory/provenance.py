"""What produced a run, for the manifest: package versions, prompt hashes, engines per role."""

from __future__ import annotations

import functools
from importlib import metadata
from typing import Any

from factory import __version__, prompts
from factory.config import Config

# vllm is optional: listed only where installed.
PACKAGES = ("ray", "vllm", "transformers", "peft", "datasets", "pyarrow", "torch")
ROLES = ("teacher", "judge", "student")


@functools.cache
def package_versions() -> dict[str, str]:
    versions = {"ragtune": __version__}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def roles(cfg: Config) -> dict[str, dict[str, Any]]:
    """Engine and model of each configured LLM role (`none` = rule-based)."""
    out = {}
    for role in ROLES:
        r = getattr(cfg, role)
        if r is not None:
            out[role] = {"engine": r.engine, "model": r.model, "adapter": r.adapter}
    return out


def describe(cfg: Config) -> dict[str, Any]:
    """The manifest's provenance keys."""
    return {"packages": package_versions(), "prompts": prompts.hashes(), "roles": roles(cfg)}
