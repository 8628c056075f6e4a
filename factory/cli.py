"""`ragtune <job> ...`: one command per job, the same as `python -m jobs.<job>`."""

from __future__ import annotations

import importlib
import sys

from factory import __version__

JOBS = ("generate", "publish", "finetune", "evaluate")


def usage() -> str:
    """The jobs with the first line of each one's docstring."""
    lines = [f"usage: ragtune [-h] [--version] {{{','.join(JOBS)}}} ...", "", "jobs:"]
    for job in JOBS:
        doc = importlib.import_module(f"jobs.{job}").__doc__ or ""
        lines.append(f"  {job:<10} {doc.strip().splitlines()[0]}")
    lines += ["", "`ragtune <job> --help` lists a job's options. Each job is also `python -m jobs.<job>`,",
              "which is what `ray job submit -- python -m jobs.<job> ...` runs on a cluster."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--version":
        print(f"ragtune {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in JOBS:
        print(f"ragtune: error: no job '{argv[0]}' (jobs: {', '.join(JOBS)}; ragtune --help)", file=sys.stderr)
        return 2
    job = importlib.import_module(f"jobs.{argv[0]}")
    return job.main(argv[1:], prog=f"ragtune {argv[0]}")


if __name__ == "__main__":
    sys.exit(main())
