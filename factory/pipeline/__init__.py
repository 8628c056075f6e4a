"""Running a job's stages in a run folder; read docs/architecture.md first.

* `folder`: `Run`, the run folder: tables (schema-checked, written atomically), reads, small
  JSON files; a read-only mode for jobs that only read a run.
* `stages`: `Stage` (what a stage reads, writes and calls), `StageRecord` (what it reports) and
  the scheduler: fingerprints, markers and the skip rule, in one place.
* `manifest`: the run's manifest.json (provenance and per-stage stats).
"""

from factory.pipeline.folder import PARQUET_ARGS, Run, no_empty_folder_left, open_run
from factory.pipeline.stages import Stage, StageRecord, Step, check_finished, plan, run_stage, run_stages

__all__ = ["PARQUET_ARGS", "Run", "Stage", "StageRecord", "Step", "check_finished", "no_empty_folder_left", "open_run", "plan",
           "run_stage", "run_stages"]
