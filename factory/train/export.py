"""The final export: the adapter and, optionally, the merged model, each with the tokenizer.

Both are written to a local temporary folder and then copied to the export
destination (local or s3://), so `AutoModelForCausalLM.from_pretrained` (and
vLLM) can load the merged folder and `PeftModel.from_pretrained` the adapter.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from factory.config import S3Config
from factory.storage import filesystem, join


def upload_dir(local: str | Path, dest: str, s3: S3Config | None = None) -> None:
    """Copy a local folder's files to `dest` (local or s3://), replacing what was there."""
    fs, root = filesystem(dest, s3)
    if fs.exists(root):
        fs.rm(root, recursive=True)
    local = Path(local)
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        target = f"{root}/{f.relative_to(local).as_posix()}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(f), target)


def export(student: Any, adapter: dict | None, plan: Any, merge: bool, metrics: dict[str, Any],
           s3: S3Config | None = None) -> dict[str, str]:
    """Save adapter (+ merged model) and summary.json under `plan.export_to`; returns where each went.

    `adapter` is the gathered adapter state under FSDP (None: the student's own weights). The merged
    model is built from a fresh copy of the base in its own dtype plus the saved adapter, so it does
    not depend on how training sharded or cast the student.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(plan.model)
    where = {"adapter": join(plan.export_to, "adapter")}
    with tempfile.TemporaryDirectory(prefix="ragtune-export-") as tmp:
        student.save_pretrained(f"{tmp}/adapter", state_dict=adapter)
        tokenizer.save_pretrained(f"{tmp}/adapter")
        if merge:
            base = AutoModelForCausalLM.from_pretrained(plan.model, dtype="auto")
            merged = PeftModel.from_pretrained(base, f"{tmp}/adapter").merge_and_unload()
            merged.save_pretrained(f"{tmp}/merged")
            tokenizer.save_pretrained(f"{tmp}/merged")
            where["merged"] = join(plan.export_to, "merged")
        summary = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
        Path(tmp, "summary.json").write_text(json.dumps({**summary, **where}, indent=2, sort_keys=True))
        upload_dir(tmp, plan.export_to, s3)
    return where
