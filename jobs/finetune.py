"""LoRA-tune the student on the qa table with Ray Train: `python -m jobs.finetune --config configs/finetune.yaml`.

Rerunning the same command resumes from the latest checkpoint under
`<train.output>/<train.name>/`.
"""

from __future__ import annotations

import sys

from factory.config import load_config
from factory.errors import cli_entry
from jobs.common import parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    cfg = load_config(args.config, args.overrides)

    from factory.train import finetune

    metrics = finetune(cfg)  # cli_entry finds a UserError that Ray wrapped
    eval_loss = metrics.get("eval_loss")
    print(
        f"ragtune: finetune finished: step {metrics.get('step')} (resumed from {metrics.get('resumed_from')}), "
        f"train loss {metrics.get('loss', float('nan')):.4f}, "
        f"eval loss {'n/a' if eval_loss is None else f'{eval_loss:.4f}'}, "
        f"export {metrics.get('export', {})}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
