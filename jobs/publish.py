"""Validate a finished run and publish it: `python -m jobs.publish --run R --to DEST`.

DEST is a local folder, s3://bucket/prefix or hf://datasets/owner/name (token
from HF_TOKEN). Without --to, the run is validated and its dataset card is
written into the run folder, which makes the folder itself loadable.
"""

from __future__ import annotations

import sys

from factory.config import load_config
from factory.errors import cli_entry
from jobs.common import parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--run", help="run folder, local or s3:// (default: output.path of the config)")
    p.add_argument("--to", dest="dest", help="local folder, s3://bucket/prefix or hf://datasets/owner/name")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)

    from factory.publish import open_run, publish, write_card

    run = open_run(args.run or cfg.output.path, cfg.s3)
    if not args.dest:
        snap = write_card(run)
        print(f"ragtune: {run.root} is valid; card written ({len(snap.shards)} shards, version {snap.version})",
              file=sys.stderr)
        return 0
    done = publish(run, args.dest, cfg.s3)
    rows = ", ".join(f"{t}/{s} {n}" for t, splits in done.rows.items() for s, n in splits.items())
    state = "published" if done.changed else "already up to date"
    print(f"ragtune: {done.dest} {state} (version {done.version}): {rows}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
