"""LoRA training throughput: the factory's training step against plain peft + transformers, same run.

    python bench/finetune_gpu.py                 # H100/H200: random-init Llama-2-7B shape, bf16
    python bench/finetune_gpu.py --tiny          # CPU smoke run of the same code (small Llama shape)

No weights are downloaded and Ray is not needed: the model is random-initialised
from a config, and the samples are random token ids with a QA-like length mix
(uniform 100-800 tokens, the first 30% a prompt that carries no loss). Every
variant trains LoRA r16 (alpha 32, all linear layers) with AdamW on the same samples:

* `plain peft`   get_peft_model + model(input_ids, attention_mask, labels): batches of
                 8 samples padded to 1024 tokens, gradient checkpointing (the anchor setup).
* `factory ...`  factory.train: samples packed into rows of `--tokens` tokens with
                 position_ids restarting per sample (no padding, no attention across
                 samples), logits only where the next token is an assistant token,
                 `train_step` (autocast bf16, clip, AdamW); with and without checkpointing,
                 and (`--flex`) with flex_attention, which skips the masked blocks that a
                 dense masked sdpa still computes (a 4096-token row costs 4096² scores).

Reported per variant: non-padding tokens/s (the tokens of the samples, padding excluded),
ratio to plain peft, MFU and peak memory. MFU = tokens/s × 4·N / peak: N counts the
matmul parameters (all parameters but the input embedding; the lm_head included), and
4·N is forward 2N + backward 2N for input gradients (frozen weights get no weight
gradients; LoRA's own FLOPs and attention scores are left out, and recomputation
under checkpointing is not credited). Peak: 989 TFLOP/s dense bf16 for H100/H200 SXM,
else `--peak-tflops`.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from factory.train.data import IGNORE, Sample, collate, make_rows  # noqa: E402
from factory.train.loop import AssistantLoss, add_lora, autocast, lr_lambda, train_step  # noqa: E402

LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000)
TINY = dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=1024)
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4}
LORA = dict(r=16, alpha=32, dropout=0.0, target_modules="all-linear")


def make_samples(n: int, vocab: int, lo: int, hi: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(lo, hi)
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = int(length * 0.3)
        out.append(Sample(ids, [IGNORE] * prompt + ids[prompt:]))
    return out


def build_base(shape: dict, device: torch.device, dtype: torch.dtype, attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, max_position_embeddings=4096, attn_implementation=attn)
    torch.manual_seed(0)
    with torch.device(device):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(previous)
    return model


def matmul_params(base) -> int:
    emb = base.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in base.parameters()) - emb + (emb if base.config.tie_word_embeddings else 0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_batches(samples: list[Sample], batch: int, pad_to: int) -> list[dict]:
    out = []
    for i in range(0, len(samples) - batch + 1, batch):
        group = samples[i:i + batch]
        ids = torch.zeros(batch, pad_to, dtype=torch.long)
        labels = torch.full((batch, pad_to), IGNORE, dtype=torch.long)
        mask = torch.zeros(batch, pad_to, dtype=torch.long)
        for b, s in enumerate(group):
            n = len(s.input_ids)
            ids[b, :n] = torch.tensor(s.input_ids)
            labels[b, :n] = torch.tensor(s.labels)
            mask[b, :n] = 1
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def run_variant(name: str, base, batches: list[dict], factory: bool, ckpt: bool, bf16: bool,
                warmup: int, steps: int, device: torch.device) -> dict:
    """Train `warmup + steps` steps; time the last `steps`. Returns the row of the table."""
    if ckpt:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_disable()
    model = add_lora(base, LORA["r"], LORA["alpha"], LORA["dropout"], LORA["target_modules"], False)
    module = AssistantLoss(model) if factory else model
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup + steps, 0.0, "constant"))
    module.train()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    row = {"variant": name, "status": "ok"}
    tokens = padded = 0
    try:
        for i in range(warmup + steps):
            if i == warmup:
                sync(device)
                start = time.perf_counter()
            batch = batches[i % len(batches)]
            if factory:
                train_step(module, optimizer, scheduler, batch, bf16, 1.0)
            else:
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast(device, bf16):
                    loss = module(**batch, use_cache=False).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if i >= warmup:
                real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
                tokens += real
                padded += batch["input_ids"].numel()
        sync(device)
        seconds = time.perf_counter() - start
        row.update(tokens_per_s=tokens / seconds, step_s=seconds / steps, tokens_per_step=tokens / steps,
                   padding=1 - tokens / padded)
    except torch.OutOfMemoryError:
        row["status"] = "OOM"
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del optimizer, scheduler, module, params
    model.unload()  # removes the LoRA layers: the next variant starts from the same base
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def packing_check(base, samples: list[Sample], device: torch.device, bf16: bool) -> tuple[float, float]:
    """Relative difference between the packed and the one-by-one loss of 4 samples, and the same for the
    packed row read as one sequence (position ids running on, so attention crosses samples): the first
    must be far below the second, which is what a leak across samples would look like."""
    base.gradient_checkpointing_disable()
    module = AssistantLoss(base).eval()

    def loss(batch: dict) -> float:
        return float(module(**{k: v.to(device) for k, v in batch.items()})[0])

    with torch.no_grad(), autocast(device, bf16):
        alone = sum(loss(collate(make_rows([s], 4096, True)[0], True)) for s in samples[:4])
        packed = collate(make_rows(samples[:4], 4096, True)[0], True)
        leaky = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1])[None]}
        return abs(loss(packed) - alone) / alone, abs(loss(leaky) - alone) / alone


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="small Llama shape on CPU (smoke test of the script)")
    p.add_argument("--tokens", type=int, default=4096, help="tokens per packed row (factory variants)")
    p.add_argument("--flex", action="store_true", help="add a variant with attn_implementation=flex_attention")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--attn", default="sdpa", help="attn_implementation for every variant")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    bf16 = device.type == "cuda"
    if args.tiny:
        torch.set_num_threads(1)
    shape = TINY if args.tiny else LLAMA_7B
    base = build_base(shape, device, torch.bfloat16 if bf16 else torch.float32, args.attn)
    base.requires_grad_(False)
    n_params = matmul_params(base)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)

    total = (args.warmup + args.steps) * 8 * 2  # enough samples for every variant's steps
    samples = make_samples(total, shape["vocab_size"], 100, 800)
    check, leak = packing_check(base, samples, device, bf16)
    plain = plain_batches(samples, 8, 1024)
    packed = [collate(r, True) for r in make_rows(samples, args.tokens, packing=True)]

    variants = [  # name, batches, factory step, gradient checkpointing
        ("plain peft, padded 8x1024, ckpt", plain, False, True),
        (f"factory packed {args.tokens}, ckpt", packed, True, True),
        (f"factory packed {args.tokens}, no ckpt", packed, True, False),
    ]
    rows = [run_variant(n, base, b, f, c, bf16, args.warmup, args.steps, device) for n, b, f, c in variants]
    if args.flex:  # block-sparse attention over the packed samples instead of a dense masked sdpa
        base.set_attn_implementation("flex_attention")
        rows.append(run_variant(f"factory packed {args.tokens}, no ckpt, flex_attention", base, packed, True, False,
                                bf16, args.warmup, args.steps, device))
    baseline = rows[0].get("tokens_per_s")
    for r in rows:
        if "tokens_per_s" in r:
            r["ratio"] = r["tokens_per_s"] / baseline if baseline else None
            r["mfu"] = r["tokens_per_s"] * 4 * n_params / (peak * 1e12) if peak else None

    print(f"device: {name}; model: Llama {'tiny' if args.tiny else '7B'} shape, {n_params / 1e6:,.1f} M matmul params, "
          f"{'bf16' if bf16 else 'fp32'}, attn {args.attn}; LoRA r{LORA['r']} all-linear; torch {torch.__version__}")
    print(f"packed vs one-by-one loss, relative difference: {check:.2e} (attention across samples: {leak:.2e})")
    print("| variant | tokens/step | padding | tokens/s | ratio | MFU | peak GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if r["status"] != "ok":
            print(f"| {r['variant']} | {r['status']} | | | | | {r.get('peak_gib', float('nan')):.1f} |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a"
        mem = f"{r['peak_gib']:.1f}" if "peak_gib" in r else "n/a"
        print(f"| {r['variant']} | {r['tokens_per_step']:.0f} | {100 * r['padding']:.0f}% | {r['tokens_per_s']:,.0f} | "
              f"{r['ratio']:.2f}x | {mfu} | {mem} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "check": check, "leak": leak, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
