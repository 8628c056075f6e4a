"""Arguments every job shares: --config and repeated --set key=value."""

from __future__ import annotations

import argparse


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", "-c", help="YAML config file (defaults apply where omitted)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set chunking.size=300 (repeatable)")
    return p
