"""LoRA-tune the student on the qa table with Ray Train.

    ragtune finetune --config configs/finetune.yaml --set train.model=<local folder or Hub id>

Checkpoints and the export (adapter/, merged/, summary.json) go to <train.output>/<train.name>/;
rerunning the same command resumes from the latest checkpoint. Same as `python -m jobs.finetune`.
"""

from __future__ import annotations

import sys

from factory.errors import cli_entry
from jobs.common import load, parser


@cli_entry
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parser("finetune", __doc__, prog).parse_args(argv)
    cfg = load(args)

    from factory.paths import check_job_outputs
    from factory.pipeline import no_empty_folder_left
    from factory.train import finetune

    check_job_outputs(cfg, "train.output")
    with no_empty_folder_left(cfg.train.output, cfg.s3):
        metrics = finetune(cfg)  # cli_entry finds a UserError that Ray wrapped
    eval_loss = metrics.get("eval_loss")
    export = {what: metrics[what] for what in ("adapter", "merged") if metrics.get(what)}
    print(
        f"ragtune: finetune finished: step {metrics.get('step')} (resumed from {metrics.get('resumed_from')}), "
        f"train loss {metrics.get('loss', float('nan')):.4f}, "
        f"eval loss {'n/a' if eval_loss is None else f'{eval_loss:.4f}'}; "
        + "; ".join(f"{what} in {where}" for what, where in export.items()),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
