"""Evaluate the tuned student: `python -m jobs.evaluate --config configs/evaluate.yaml`."""

from __future__ import annotations

import sys

from factory.config import load_config
from factory.errors import cli_entry
from jobs.common import parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--force", action="store_true", help="rerun every evaluation stage even if up to date")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)

    from factory.evaluate import evaluate

    run = evaluate(cfg, force=args.force)
    print(f"ragtune: evaluate finished: {run.root}/report.html (config {cfg.hash})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
