"""Turn a corpus into the qa dataset: `python -m jobs.generate --config configs/quickstart.yaml`."""

from __future__ import annotations

import sys

from factory.config import load_config
from factory.errors import cli_entry
from jobs.common import parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--force", action="store_true", help="rerun every stage even if up to date")
    p.add_argument("--until", help="stop after this stage")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)

    from factory.generate import generate

    run = generate(cfg, force=args.force, until=args.until)
    print(f"ragtune: generate finished: {run.root} (config {cfg.hash})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
