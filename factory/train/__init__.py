"""The `finetune` job: LoRA-tune the student on the qa table with Ray Train.

`finetune(cfg)` reads `qa` (train/test) from the run or published dataset
through Ray Data, tokenizes and packs it there, and runs
`factory.train.loop.run_training` on every worker of a `TorchTrainer`.
Checkpoints and the export live under `<train.output>/<train.name>/`
(local or s3://); rerunning the same command resumes from the latest checkpoint.
"""

from __future__ import annotations

from typing import Any


def finetune(cfg: Any) -> dict[str, Any]:
    """Train (or resume) the student; returns the final metrics. Ray is imported only here,
    so `factory.train.data` and `factory.train.loop` work where Ray is not installed."""
    from factory.train.driver import finetune as run

    return run(cfg)
