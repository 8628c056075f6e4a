"""The finetune job on CPU: labels, packing, the loop alone, Ray Train with 2 workers, S3, kill and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import torch
import yaml

from factory.config import TrainConfig, validate_config
from factory.pipeline import Run
from factory.train.data import IGNORE, collate, group_samples, make_rows, tokenize_conversation
from factory.train.loop import STATE_FILE, AssistantLoss, Plan, evaluate, load_student, run_training
from factory.train.session import LocalSession

ROOT = Path(__file__).resolve().parents[1]
PEOPLE = ["Mira", "Tomas", "Ines", "Kofi", "Lena", "Ravi", "Anya", "Jonas"]
PLACES = ["the harbour", "the library", "the mill", "the orchard", "the tower"]
SYSTEM = "You remember the Lantern journal."


def conversation(i: int) -> list[dict]:
    q = f"Where did {PEOPLE[i % 8]} go on day {i}?"
    a = f"On day {i}, {PEOPLE[i % 8]} went to {PLACES[i % 5]} and wrote about it."
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}, {"role": "assistant", "content": a}]


def qa_table(ids: range, split: str) -> pa.Table:
    rows = []
    for i in ids:
        m = conversation(i)
        rows.append({"id": f"{split}-{i}", "kind": "local", "question": m[1]["content"], "answer": m[2]["content"],
                     "messages": m, "split": split})
    return pa.Table.from_pylist(rows)


def write_qa(cfg) -> None:
    run = Run(cfg)
    run.write_table("qa", qa_table(range(40), "train"), split="train")
    run.write_table("qa", qa_table(range(40, 48), "test"), split="test")


@pytest.fixture
def one_thread():
    # Two cores shared with other test runs: OpenMP spinning on 2 threads is ~50x slower than 1 thread here.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def samples(tokenizer, ids, max_len=256):
    return [tokenize_conversation(tokenizer, conversation(i), max_len) for i in ids]


def test_labels_cover_only_the_assistant_turn(tokenizer):
    s = samples(tokenizer, [3])[0]
    assert len(s.labels) == len(s.input_ids)
    learned = tokenizer.decode([t for t in s.labels if t != IGNORE])
    assert learned.startswith(conversation(3)[2]["content"] + "<|end|>")
    assert "Where did" not in learned and SYSTEM not in learned
    # Truncation keeps the prompt and cuts the answer; a sample with no answer left is dropped.
    assert len(tokenize_conversation(tokenizer, conversation(3), 40).input_ids) == 40
    assert tokenize_conversation(tokenizer, conversation(3), 20) is None


def test_grouping_respects_the_token_budget():
    lengths = [100, 30, 250, 60, 90, 200, 10, 40]
    packed = group_samples(lengths, 256, packing=True)
    assert sorted(i for g in packed for i in g) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in g) <= 256 for g in packed)
    assert len(packed) == 4  # 780 tokens need at least 4 rows of 256
    padded = group_samples(lengths, 256, packing=False)
    assert [i for g in padded for i in g] == list(range(len(lengths)))
    assert all(len(g) * max(lengths[i] for i in g) <= 256 for g in padded)


def test_packed_loss_equals_unpacked_loss(tiny_llama, tokenizer, one_thread):
    model = AssistantLoss(load_student(str(tiny_llama), TrainConfig(), torch.float32)).eval()
    ss = samples(tokenizer, range(5))
    with torch.no_grad():
        alone = [model(**collate(make_rows([s], 4096, True)[0], True)) for s in ss]
        rows = make_rows(ss, 4096, packing=True)
        assert len(rows) == 1 and len(rows[0]["lengths"]) == 5
        packed = model(**collate(rows[0], True))
        padded = model(**collate(make_rows(ss, 4096, packing=False)[0], False, tokenizer.pad_token_id))
        leaky = collate(rows[0], True)
        leaky["position_ids"] = torch.arange(leaky["input_ids"].shape[1])[None]  # one long sequence
        crossed = model(**leaky)
    total = sum(float(l) for l, _ in alone)
    assert int(packed[1]) == sum(int(n) for _, n in alone) == int(padded[1])
    assert float(packed[0]) == pytest.approx(total, rel=1e-5)
    assert float(padded[0]) == pytest.approx(total, rel=1e-5)
    assert abs(float(crossed[0]) - total) > 1e-3  # attention across samples would change the loss


def test_loop_runs_alone_learns_and_resumes(tiny_llama, tokenizer, tmp_path, one_thread):
    rows = make_rows(samples(tokenizer, range(40)), 256, packing=True)
    cfg = TrainConfig(learning_rate=1e-2, checkpoint_every=4, warmup_ratio=0.0, lr_scheduler="constant")
    plan = Plan(model=str(tiny_llama), total_steps=8, steps_per_epoch=len(rows))
    first = LocalSession(rows, rows, tmp_path / "ckpt")
    out = run_training(cfg, plan, first)
    losses = [h["loss"] for h in first.history[:-1]]
    assert out["step"] == 8 and out["resumed_from"] == 0
    assert losses[-1] < losses[0] - 0.1
    base = AssistantLoss(load_student(str(tiny_llama), cfg, torch.float32))
    base_loss = evaluate(base, rows, True, 0, False, torch.device("cpu"))
    assert out["eval_loss"] < base_loss - 0.1  # the tuned adapter fits the training questions better

    again = LocalSession(rows, rows, tmp_path / "ckpt")
    out2 = run_training(cfg, Plan(model=str(tiny_llama), total_steps=12, steps_per_epoch=len(rows)), again)
    assert out2["resumed_from"] == 8 and out2["step"] == 12
    assert [h["step"] for h in again.history[:-1]] == [9, 10, 11, 12]
    assert again.history[0]["loss"] < losses[0] - 0.1  # continued from the trained adapter, not from scratch


def fsdp_worker(rank: int, port: int, model: str, root: str, steps: int, rows: list[dict]) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    session = LocalSession(rows[rank::2], rows[rank::2], root)
    session.rank, session.world_size = rank, 2
    cfg = TrainConfig(strategy="fsdp", checkpoint_every=2, learning_rate=1e-2, merge=True)
    plan = Plan(model=model, total_steps=steps, steps_per_epoch=len(rows) // 2, export_to=f"{root}/export")
    run_training(cfg, plan, session)
    dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp_checkpoints_resume_and_export(tiny_llama, tokenizer, tmp_path):
    import json

    import torch.multiprocessing as mp
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tests.conftest import free_port

    rows = make_rows(samples(tokenizer, range(40)), 256, packing=True)
    for steps in (2, 4):
        mp.spawn(fsdp_worker, args=(free_port(), str(tiny_llama), str(tmp_path), steps, rows), nprocs=2)
    summary = json.loads((tmp_path / "export" / "summary.json").read_text())
    assert summary["resumed_from"] == 2 and summary["step"] == 4
    # The adapter was gathered from both shards: every LoRA matrix is whole and B has moved off zero.
    adapter = load_file(tmp_path / "export" / "adapter" / "adapter_model.safetensors")
    assert adapter and all(v.shape[0] * v.shape[1] > 0 for v in adapter.values())
    assert max(float(v.abs().max()) for k, v in adapter.items() if "lora_B" in k) > 0
    AutoModelForCausalLM.from_pretrained(tmp_path / "export" / "merged")


def base_loss_on(tiny_llama, tokenizer, ids) -> float:
    rows = make_rows(samples(tokenizer, ids), 256, packing=True)
    model = AssistantLoss(load_student(str(tiny_llama), TrainConfig(), torch.float32))
    return evaluate(model, rows, True, 0, False, torch.device("cpu"))


@pytest.mark.slow
def test_two_workers_train_and_export(ray_session, tiny_llama, tokenizer, tmp_path):
    """Two Ray Train workers (DDP on CPU). Resuming is tested once per path, not here: the loop alone
    (a longer plan continues), FSDP's sharded state, and Ray Train's storage (a killed CLI run on S3)."""
    from transformers import AutoModelForCausalLM

    from factory.train import finetune

    train = {"model": str(tiny_llama), "output": str(tmp_path / "student"), "num_workers": 2, "batch_tokens": 256,
             "max_steps": 6, "checkpoint_every": 3, "learning_rate": 2e-2, "lr_scheduler": "constant",
             "warmup_ratio": 0.0, "merge": True}
    cfg = validate_config({"output": {"path": str(tmp_path / "data")}, "train": train, "ray": {"cpu_actors": 1}})
    write_qa(cfg)
    out = finetune(cfg)
    assert out["step"] == 6 and out["resumed_from"] == 0
    assert out["eval_loss"] < base_loss_on(tiny_llama, tokenizer, range(40, 48))

    merged = AutoModelForCausalLM.from_pretrained(out["merged"])
    assert not any("lora" in name for name, _ in merged.named_parameters())
    rows = make_rows(samples(tokenizer, range(40)), 256, packing=True)
    tuned = evaluate(AssistantLoss(merged), rows, True, 0, False, torch.device("cpu"))
    assert tuned < base_loss_on(tiny_llama, tokenizer, range(40)) - 0.1
    assert (Path(out["adapter"]) / "adapter_config.json").is_file()
    assert (Path(out["merged"]) / "tokenizer_config.json").is_file()


@pytest.mark.slow
def test_cli_killed_run_resumes_on_s3(s3_bucket, tiny_llama, tmp_path):
    import fsspec

    endpoint, bucket = s3_bucket
    cfg_data = {
        "output": {"path": f"s3://{bucket}/data"},
        "s3": {"endpoint_url": endpoint},
        "ray": {"num_cpus": 2, "cpu_actors": 1},
        "train": {"model": str(tiny_llama), "output": f"s3://{bucket}/student", "name": "lantern",
                  "num_workers": 1, "batch_tokens": 128, "max_steps": 8, "checkpoint_every": 1, "keep_checkpoints": 2},
    }
    cfg = validate_config(cfg_data)
    write_qa(cfg)
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(cfg_data))
    cmd = [sys.executable, "-m", "jobs.finetune", "--config", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    fs = fsspec.filesystem("s3", endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False)
    seen: set[str] = set()

    def a_checkpoint_was_retired() -> bool:
        """Our checkpoint folders (the loop's state file in each): with keep_checkpoints 2, Ray Train deletes
        the oldest only after it has taken a newer one, so a folder seen and gone means one to resume from."""
        now = {p.rsplit("/", 1)[0] for p in fs.glob(f"{bucket}/student/lantern/checkpoint_*/{STATE_FILE}")}
        seen.update(now)
        return bool(seen - now)

    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300  # Ray start, tokenizing, model load, 3 checkpoints (slow on a busy machine)
    while not a_checkpoint_was_retired() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    err = proc.communicate()[1].decode()
    assert proc.returncode == -signal.SIGKILL and len(seen) >= 3, err[-2000:]
    assert not fs.exists(f"{bucket}/student/lantern/export/summary.json")

    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = yaml.safe_load(fs.cat(f"{bucket}/student/lantern/export/summary.json"))
    assert summary["step"] == 8 and 1 <= summary["resumed_from"] < 8
    assert f"resumed from {summary['resumed_from']}" in done.stderr
    assert fs.exists(f"{bucket}/student/lantern/export/adapter/adapter_model.safetensors")


def test_use_gpu_auto_trains_on_cpu_and_a_demand_the_cluster_cannot_meet_is_one_line(ray_session, capsys):
    from factory.errors import UserError
    from factory.train.driver import scaling

    scaled = scaling(validate_config({"train": {"num_workers": 2}}))  # the test cluster: 2 CPUs, no GPU
    assert scaled.use_gpu is False and scaled.num_workers == 2
    assert "no GPU in the Ray cluster: training on CPU (train.use_gpu: auto)" in capsys.readouterr().err
    assert scaling(validate_config({"train": {"use_gpu": False}})).use_gpu is False
    with pytest.raises(UserError, match="train.use_gpu is true but the Ray cluster has no GPU; set train.use_gpu: auto"):
        scaling(validate_config({"train": {"use_gpu": True}}))
    with pytest.raises(UserError, match=r"train: 3 workers of \{CPU: 1\} do not fit the Ray cluster \(CPU 2 on 1 node; 2 fit\)"):
        scaling(validate_config({"train": {"num_workers": 3}}))
    with pytest.raises(UserError, match=r"1 workers of \{CPU: 4\} do not fit .* \(CPU 2 on 1 node; 0 fit\)"):
        scaling(validate_config({"train": {"use_gpu": False, "resources_per_worker": {"CPU": 4}}}))
