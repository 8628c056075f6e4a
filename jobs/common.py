"""What every job shares: its argument parser (--config, repeated --set) and loading the config."""

from __future__ import annotations

import argparse
import os

from factory.config import Config, load_config
from factory.paths import resolve_paths


def parser(job: str, doc: str, prog: str | None = None) -> argparse.ArgumentParser:
    """The job's parser; `prog` is how the user called it (`ragtune <job>` or `python -m jobs.<job>`)."""
    summary, _, details = doc.strip().partition("\n")
    p = argparse.ArgumentParser(prog=prog or f"python -m jobs.{job}", description=summary, epilog=details.strip() or None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", help="YAML config file (defaults apply where omitted)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set chunking.size=300 (repeatable)")
    return p


def load(args: argparse.Namespace) -> Config:
    """The validated config with its relative paths resolved against the current directory."""
    cfg = resolve_paths(load_config(args.config, args.overrides))
    if not cfg.ray.progress:
        # Hugging Face's bars (loading weights, ...) go with Ray's; read when transformers is imported, later.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return cfg
