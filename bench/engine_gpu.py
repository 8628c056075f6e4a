"""Generation throughput: the hf engine's core (`HFGenerator`) against a plain `model.generate` loop, same run.

    python bench/engine_gpu.py                    # H100/H200: random-init Qwen2.5-1.5B shape, bf16
    python bench/engine_gpu.py --shape qwen2.5-7b
    python bench/engine_gpu.py --tiny             # CPU smoke run of the same code (tiny shape, fp32)

No weights are downloaded and neither Ray nor vLLM is needed: the model is
random-initialised from a Qwen2Config with the real model's numbers, and the
prompts are random token ids (lengths uniform in [--in/2, --in]); the model has
no end token, so every row generates exactly --out tokens in every variant.

* `plain loop`   one prompt at a time, `model.generate(max_new_tokens=--out)`, greedy.
                 One-at-a-time speed does not depend on how many prompts there are,
                 so it is timed on the first --baseline-prompts prompts only.
* `hf engine`    `factory.engines.hf.HFGenerator.generate` on all prompts: sorted by
                 length, micro-batches of --batch rows, left padding; with the dynamic
                 KV cache, and (GPU) `cache_implementation="static"`, where transformers
                 compiles the decoder (the first, compiling call is timed apart).

Reported: generated tokens/s, ratio to the plain loop, and the decode floor: each
decode step must read every weight once, so a step takes at least
weight bytes / memory bandwidth (bandwidth measured here by a device copy); the
ceiling is then rows-per-step / step time (1 for the loop, --batch for the
engine; KV-cache reads and prefill are left out, so the real ceiling is lower).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from factory.engines.hf import HFGenerator

SHAPES = {
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=True),
}


def build(shape: str, device: str, dtype: torch.dtype):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    dims = SHAPES[shape]
    cfg = Qwen2Config(**dims, max_position_embeddings=32768, rope_theta=1_000_000.0,
                      bos_token_id=None, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(dtype).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    # A word-level tokenizer over the whole vocabulary: real decode work, no download.
    vocab = {f"t{i}": i for i in range(dims["vocab_size"])}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t1")),
                                  pad_token="t0", unk_token="t1")
    return model, tok


def make_prompts(n: int, max_len: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(2, vocab) for _ in range(rng.randint(max(1, max_len // 2), max_len))] for _ in range(n)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bandwidth_gbs(device: str) -> float:
    """Device memory bandwidth by copy (read + write bytes / time), GB/s."""
    n = (1 << 30) if device.startswith("cuda") else (1 << 27)
    x = torch.empty(n, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    sync(device)
    reps = 10
    start = time.perf_counter()
    for _ in range(reps):
        y.copy_(x)
    sync(device)
    return 2 * n * reps / (time.perf_counter() - start) / 1e9


def plain_loop(model, prompts: list[list[int]], out: int, device: str) -> tuple[list[list[int]], float]:
    """Greedy `generate` one prompt at a time: the generated ids of each prompt, and the seconds."""
    outputs = []
    sync(device)
    start = time.perf_counter()
    for p in prompts:
        ids = torch.tensor([p], device=device)
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=out,
                                 do_sample=False, pad_token_id=0)
        outputs.append(gen[0, len(p):].tolist())
    sync(device)
    return outputs, time.perf_counter() - start


def engine(gen: HFGenerator, prompts: list[list[int]], out: int, device: str) -> tuple[list, float]:
    """The engine's greedy results for all prompts (length-sorted micro-batches, left padding), and the seconds."""
    sync(device)
    start = time.perf_counter()
    results = gen.generate(prompts, [out] * len(prompts), [0.0] * len(prompts))
    sync(device)
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(errors[0])
    return results, time.perf_counter() - start


def differing_rows(tok, plain: list[list[int]], results: list) -> list[int]:
    """Rows whose engine text is not the plain loop's: batching and left padding must not change what a
    greedy row generates (bf16 near-ties of a random-init model can still flip a token)."""
    return [i for i, (ids, r) in enumerate(zip(plain, results)) if tok.decode(ids, skip_special_tokens=True) != r.text]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shape on CPU: a smoke run of the same code")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--baseline-prompts", type=int, default=8)
    ap.add_argument("--in", dest="in_len", type=int, default=512, help="longest prompt (tokens)")
    ap.add_argument("--out", type=int, default=128, help="generated tokens per prompt")
    ap.add_argument("--batch", type=int, default=64, help="micro-batch rows")
    ap.add_argument("--static", choices=["auto", "yes", "no"], default="auto",
                    help="also run the static-cache (compiled) variant; auto: on a GPU")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    if args.tiny:
        args.shape = "tiny"
        args.prompts, args.baseline_prompts, args.in_len, args.out, args.batch = 24, 4, 64, 16, 8
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    card = torch.cuda.get_device_name() if device == "cuda" else "CPU"

    model, tok = build(args.shape, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = bandwidth_gbs(device)
    step_floor_s = weight_bytes / (bw * 1e9)
    prompts = make_prompts(args.prompts, args.in_len, SHAPES[args.shape]["vocab_size"])

    rows = []
    plain_loop(model, prompts[:1], 4, device)  # warm-up: kernels, allocator
    plain, s = plain_loop(model, prompts[: args.baseline_prompts], args.out, device)
    n = sum(map(len, plain))
    base_tps = n / s
    rows.append({"variant": "plain loop (batch 1)", "prompts": args.baseline_prompts, "tokens": n, "seconds": s,
                 "tokens_per_s": base_tps, "floor_tokens_per_s": 1 / step_floor_s})

    variants = [("hf engine, dynamic cache", None)]
    if args.static == "yes" or (args.static == "auto" and device == "cuda"):
        variants.append(("hf engine, static cache (compiled)", "static"))
    for name, cache in variants:
        # The static variant pads every prompt to --in tokens: one shape, so one compilation.
        gen = HFGenerator("random-init", model_obj=model, tokenizer=tok, device=device, max_batch_size=args.batch,
                          max_batch_tokens=args.batch * (args.in_len + args.out), cache_implementation=cache,
                          pad_to_multiple_of=args.in_len if cache == "static" else 8)
        _, ws = engine(gen, prompts[: args.batch], args.out, device)  # warm-up (compiles the static variant)
        results, s = engine(gen, prompts, args.out, device)
        n = sum(r.output_tokens for r in results)
        rows.append({"variant": name, "prompts": args.prompts, "tokens": n, "seconds": s, "tokens_per_s": n / s,
                     "warmup_s": ws, "floor_tokens_per_s": args.batch / step_floor_s,
                     "rows_unlike_plain_loop": len(differing_rows(tok, plain, results))})

    print(f"\n{card}; {args.shape} ({params / 1e6:,.1f} M params, {str(dtype).split('.')[-1]}, random init); "
          f"prompts {args.in_len // 2}-{args.in_len} tokens, {args.out} out; micro-batch {args.batch}")
    print(f"decode floor: {weight_bytes / 1e9:.2f} GB of weights / {bw:,.0f} GB/s measured copy bandwidth = "
          f"{step_floor_s * 1e3:.2f} ms per decode step -> at most {1 / step_floor_s:,.0f} tok/s per sequence, "
          f"{args.batch / step_floor_s:,.0f} tok/s at batch {args.batch}\n")
    print("| variant | prompts | generated tokens | s | tokens/s | × plain loop | decode floor tok/s | % of floor |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['variant']} | {r['prompts']} | {r['tokens']:,} | {r['seconds']:.2f} | {r['tokens_per_s']:,.1f} | "
              f"{r['tokens_per_s'] / base_tps:.2f} | {r['floor_tokens_per_s']:,.0f} | "
              f"{100 * r['tokens_per_s'] / r['floor_tokens_per_s']:.0f}% |")
    for r in rows[1:]:
        print(f"{r['variant']}: {args.baseline_prompts - r['rows_unlike_plain_loop']} of the plain loop's "
              f"{args.baseline_prompts} greedy outputs generated exactly")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "card": card, "shape": args.shape, "params": params, "dtype": str(dtype), "bandwidth_gbs": bw,
            "step_floor_ms": step_floor_s * 1e3, "args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
