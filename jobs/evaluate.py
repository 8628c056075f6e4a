"""Evaluate the tuned student against the baselines: an LLM judge, or judge-free metrics.

    ragtune evaluate --config configs/evaluate.yaml [--force]

Writes report.html and results.parquet to evaluate.output (default <run>/eval). Same as
`python -m jobs.evaluate`.
"""

from __future__ import annotations

import sys

from factory.errors import cli_entry
from jobs.common import load, parser


@cli_entry
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = parser("evaluate", __doc__, prog)
    p.add_argument("--force", action="store_true", help="rerun every evaluation stage even if up to date")
    args = p.parse_args(argv)
    cfg = load(args)

    from factory.evaluate import evaluate, output_root
    from factory.paths import check_job_outputs
    from factory.pipeline import no_empty_folder_left

    check_job_outputs(cfg, "evaluate.output" if cfg.evaluate.output else "evaluate.run" if cfg.evaluate.run else "output.path")
    with no_empty_folder_left(output_root(cfg), cfg.s3):
        run = evaluate(cfg, force=args.force)
    print(f"ragtune: evaluate finished: {run.root}/report.html (config {cfg.hash})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
