"""The `finetune` job: LoRA-tune the student on the qa table with Ray Train.

`finetune(cfg)` reads `qa` (train/test) from the run or published dataset
through Ray Data, tokenizes and packs it there, and runs
`factory.train.loop.run_training` on every worker of a `TorchTrainer`.
Checkpoints and the export live under `<train.output>/<train.name>/`
(local or s3://); rerunning the same command resumes from the latest checkpoint.
"""

from factory.train.driver import finetune

__all__ = ["finetune"]
