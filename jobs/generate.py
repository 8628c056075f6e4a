"""Turn a corpus into the qa dataset: ingest, chunk, graph, reports, synthesis.

    ragtune generate --config configs/quickstart.yaml [--set key=value ...] [--until STAGE] [--force]

A rerun skips the stages that are up to date. Same as `python -m jobs.generate`.
"""

from __future__ import annotations

import sys

from factory.errors import cli_entry
from jobs.common import load, parser


@cli_entry
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from factory.generate import STAGES

    names = [s.name for s in STAGES]
    p = parser("generate", __doc__, prog)
    p.add_argument("--force", action="store_true", help="rerun every stage even if up to date")
    p.add_argument("--until", choices=names, metavar="STAGE", help=f"stop after this stage: {', '.join(names)}")
    args = p.parse_args(argv)
    cfg = load(args)

    from factory.generate import generate
    from factory.paths import check_job_outputs
    from factory.pipeline import no_empty_folder_left

    check_job_outputs(cfg, "output.path")
    with no_empty_folder_left(cfg.output.path, cfg.s3):
        run = generate(cfg, force=args.force, until=args.until)
    print(f"ragtune: generate finished: {run.root} (config {cfg.hash})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
