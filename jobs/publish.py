"""Validate a finished run and publish it to a folder, s3:// or the Hugging Face Hub.

    ragtune publish --run RUN [--to DEST]

DEST is a local folder, s3://bucket/prefix or hf://datasets/owner/name (token from HF_TOKEN).
Without --to, the run is validated and its dataset card is written into the run folder, which
makes the folder itself loadable. Same as `python -m jobs.publish`.
"""

from __future__ import annotations

import os
import sys

from factory.errors import cli_entry
from jobs.common import load, parser


@cli_entry
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = parser("publish", __doc__, prog)
    p.add_argument("--run", help="run folder, local or s3:// (default: output.path of the config)")
    p.add_argument("--to", dest="dest", help="local folder, s3://bucket/prefix or hf://datasets/owner/name")
    args = p.parse_args(argv)
    cfg = load(args)

    from factory.card import write_card
    from factory.paths import resolve
    from factory.pipeline import no_empty_folder_left
    from factory.publish import publish
    from factory.pipeline import open_run

    # Publishing elsewhere only reads the run; the card in place is written into it.
    run = open_run(resolve(args.run, os.getcwd()) if args.run else cfg.output.path, cfg.s3, read_only=bool(args.dest))
    if not args.dest:
        snap = write_card(run)
        print(f"ragtune: {run.root} is valid; card written ({len(snap.shards)} shards, version {snap.version})",
              file=sys.stderr)
        return 0
    dest = resolve(args.dest, os.getcwd())
    with no_empty_folder_left(dest, cfg.s3):
        done = publish(run, dest, cfg.s3)
    rows = ", ".join(f"{t}/{s} {n}" for t, splits in done.rows.items() for s, n in splits.items())
    state = "published" if done.changed else "already up to date"
    print(f"ragtune: {done.dest} {state} (version {done.version}): {rows}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
