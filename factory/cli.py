"""`ragtune <job> ...`: one command per job, the same as `python -m jobs.<job>`."""

from __future__ import annotations

import importlib
import sys

JOBS = ("generate", "publish", "finetune", "evaluate")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in JOBS:
        print(f"usage: ragtune {{{','.join(JOBS)}}} [options]   (ragtune <job> --help for each)", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    job = importlib.import_module(f"jobs.{argv[0]}")
    return job.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
