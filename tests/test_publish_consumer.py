"""A real consumer of a published dataset: TRL's SFTTrainer trains on the `qa` train split as loaded."""

from __future__ import annotations

import math

import pytest

from factory.pipeline import open_run
from factory.publish import publish
from tests.support.finished_run import finished_run


@pytest.mark.slow
def test_trl_sft_trains_on_published_qa(tmp_path, journal, tiny_llama):
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    run = finished_run(tmp_path / "run", journal)
    dest = tmp_path / "published"
    publish(open_run(run.root), str(dest))

    train = load_dataset(str(dest), "qa", split="train")  # unchanged: all columns, as published
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, max_length=256, seed=0,
    )
    trainer = SFTTrainer(model=str(tiny_llama), args=args, train_dataset=train)
    result = trainer.train()
    assert result.global_step == 3
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(x) and x > 0 for x in losses)
