"""The training loop: one function that Ray Train runs per worker, or that runs alone.

`run_training(cfg, plan, session)` loads the student with a LoRA adapter,
restores the latest checkpoint if there is one, trains to `plan.total_steps`
(DDP or FSDP when there are several workers), reports metrics and checkpoints
through the session, evaluates on the test rows and exports the adapter (and
the merged model). Nothing here imports Ray; `factory.train.session` does, lazily.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from factory.train.data import IGNORE, collate

if TYPE_CHECKING:  # pydantic is not needed to run the loop (the GPU benchmark has no pydantic guarantee)
    from factory.config import S3Config, TrainConfig

STATE_FILE = "trainer_state.pt"


@dataclass
class Plan:
    """What the driver worked out before training: where the student is and how long to train."""

    model: str
    total_steps: int
    steps_per_epoch: int
    export_to: str | None = None  # local or s3:// folder for adapter/, merged/, summary.json
    pad_id: int = 0


class AssistantLoss(nn.Module):
    """Summed next-token loss over labelled (assistant) tokens, and their count.

    Logits are computed only at positions whose next token is labelled
    (`logits_to_keep` with indices): prompts and padding cost no lm_head
    matmul and no vocabulary-sized float32 buffer.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets = labels[:, 1:]
        keep = (targets != IGNORE).any(0).nonzero().squeeze(1)
        out = self.model(input_ids=input_ids, use_cache=False, logits_to_keep=keep, **inputs)
        wanted = targets[:, keep]
        loss = F.cross_entropy(out.logits.flatten(0, 1).float(), wanted.flatten(), ignore_index=IGNORE, reduction="sum")
        return loss, (wanted != IGNORE).sum()


def add_lora(base: nn.Module, r: int, alpha: int, dropout: float, target_modules: list[str] | str,
             gradient_checkpointing: bool, adapter: str | None = None) -> nn.Module:
    """Wrap a causal LM with a trainable LoRA adapter: a fresh one, or `adapter` from a checkpoint."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if adapter:
        return PeftModel.from_pretrained(base, adapter, is_trainable=True)
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM")
    return get_peft_model(base, lora)


def load_student(model: str, cfg: TrainConfig, dtype: torch.dtype, adapter: str | None = None) -> nn.Module:
    """The student (local path or Hub id) with its LoRA adapter, as `cfg` describes."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, attn_implementation=cfg.attn_implementation)
    return add_lora(base, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules,
                    cfg.gradient_checkpointing, adapter)


def lr_lambda(total: int, warmup_ratio: float, kind: str):
    warmup = int(total * warmup_ratio)

    def scale(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress

    return scale


def wrap(module: nn.Module, strategy: str, device: torch.device, world_size: int) -> nn.Module:
    """DDP, or FSDP2 (each decoder layer sharded, then the root) across workers; nothing for one."""
    module.to(device)
    if world_size == 1:
        return module
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        layers = set(getattr(module.model.get_base_model(), "_no_split_modules", None) or [])
        for sub in list(module.modules()):
            if type(sub).__name__ in layers:
                fully_shard(sub)
        fully_shard(module)
        return module
    return nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def sharded(cfg: TrainConfig, world_size: int) -> bool:
    return cfg.strategy == "fsdp" and world_size > 1


def autocast(device: torch.device, bf16: bool):
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, batch: dict[str, torch.Tensor],
               bf16: bool, max_grad_norm: float) -> tuple[float, int]:
    """One optimizer step on one micro-batch: token-mean loss over assistant tokens. Returns (loss sum, tokens)."""
    device = next(p.device for p in module.parameters())
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    with autocast(device, bf16):
        loss_sum, n = module(**batch)
    (loss_sum / n.clamp(min=1)).backward()
    if max_grad_norm > 0:  # works on FSDP2's sharded (DTensor) gradients too
        torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss_sum.detach()), int(n)


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum scalars across workers (identity in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate(module: nn.Module, rows: Iterable[dict], packing: bool, pad_id: int, bf16: bool,
             device: torch.device) -> float | None:
    """Token-mean loss over the assistant tokens of `rows`, summed over all workers."""
    module.eval()
    loss, n = 0.0, 0
    for row in rows:
        batch = {k: v.to(device) for k, v in collate(row, packing, pad_id).items()}
        with autocast(device, bf16):
            s, c = module(**batch)
        loss += float(s)
        n += int(c)
    module.train()
    loss, n = all_sum([loss, n], device)
    return loss / n if n else None


def trainable_state(module: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> tuple[dict | None, dict]:
    """(adapter weights, optimizer state) to save. Under FSDP every worker must call this:
    the LoRA shards and their optimizer state are gathered, full, on the CPU."""
    if not fsdp:
        return None, optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    weights = get_model_state_dict(module, options=opts)
    adapter = {k.removeprefix("model."): v for k, v in weights.items()}  # keys as the PeftModel names them
    return adapter, get_optimizer_state_dict(module, optimizer, options=opts)


def load_optimizer(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict, fsdp: bool) -> None:
    if not fsdp:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))


def save_checkpoint(student: nn.Module, adapter: dict | None, optimizer_state: dict, scheduler: Any, step: int,
                    path: str) -> None:
    student.save_pretrained(os.path.join(path, "adapter"), state_dict=adapter)
    torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "step": step},
               os.path.join(path, STATE_FILE))


def run_training(cfg: TrainConfig, plan: Plan, session: Any, s3: S3Config | None = None) -> dict[str, Any]:
    """Train (or continue training) to `plan.total_steps`, evaluate, export; returns the last metrics."""
    from factory.train.session import new_checkpoint_dir

    torch.manual_seed(cfg.seed)
    device = session.device
    bf16 = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"
    state: dict[str, Any] = {}
    with session.latest_checkpoint() as ckpt:
        adapter = os.path.join(ckpt, "adapter") if ckpt else None
        student = load_student(plan.model, cfg, torch.float32 if not bf16 else torch.bfloat16, adapter)
        if ckpt:
            state = torch.load(os.path.join(ckpt, STATE_FILE), map_location="cpu", weights_only=False)
    module = wrap(AssistantLoss(student), cfg.strategy, device, session.world_size)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(plan.total_steps, cfg.warmup_ratio, cfg.lr_scheduler))
    fsdp = sharded(cfg, session.world_size)
    if state:
        load_optimizer(module, optimizer, state["optimizer"], fsdp)
        scheduler.load_state_dict(state["scheduler"])
    step = resumed_from = int(state.get("step", 0))
    module.train()
    metrics: dict[str, Any] = {"step": step, "resumed_from": resumed_from}
    epoch, skip = divmod(step, plan.steps_per_epoch)
    while step < plan.total_steps:
        for i, row in enumerate(session.train_rows(epoch)):
            if i < skip:
                continue
            if i >= plan.steps_per_epoch or step >= plan.total_steps:
                break
            start = time.perf_counter()
            batch = collate(row, cfg.packing, plan.pad_id)
            loss_sum, n = train_step(module, optimizer, scheduler, batch, bf16, cfg.max_grad_norm)
            loss_sum, n, tokens = all_sum([loss_sum, n, batch["input_ids"].numel()], device)
            step += 1
            metrics = {
                "step": step, "epoch": epoch, "resumed_from": resumed_from, "loss": loss_sum / max(n, 1),
                "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens / (time.perf_counter() - start),
            }
            if cfg.eval_every and step % cfg.eval_every == 0:
                metrics["eval_loss"] = evaluate(module, session.test_rows(), cfg.packing, plan.pad_id, bf16, device)
            path = None
            if step % cfg.checkpoint_every == 0 or step == plan.total_steps:
                adapter, optimizer_state = trainable_state(module, optimizer, fsdp)
                if session.rank == 0:
                    path = new_checkpoint_dir()
                    save_checkpoint(student, adapter, optimizer_state, scheduler, step, path)
            session.report(metrics, path)
            if path and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
        epoch, skip = epoch + 1, 0
    metrics = {**metrics, "step": step, "resumed_from": resumed_from,
               "eval_loss": evaluate(module, session.test_rows(), cfg.packing, plan.pad_id, bf16, device)}
    adapter = trainable_state(module, optimizer, fsdp)[0] if plan.export_to else None
    if session.rank == 0 and plan.export_to:
        from factory.train.export import export

        metrics["export"] = export(student, adapter, plan, cfg.merge, metrics, s3)
    session.report(metrics)
    return metrics

