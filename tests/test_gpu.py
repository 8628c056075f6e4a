"""On a CUDA GPU (skipped without one): the correctness parts of the GPU benchmarks, on the card they time.

* bench/finetune_gpu.py: a packed row gives the loss of its samples one by one (no attention across
  samples), through CUDA's sdpa kernels, in fp32 (where a leak shows) and in bf16 (what training runs).
* bench/engine_gpu.py: the hf engine's length-sorted, left-padded micro-batches generate exactly what a
  one-prompt-at-a-time greedy `generate` does, with the dynamic and the static (compiled) KV cache.
"""

from __future__ import annotations

import pytest
import torch

from bench import engine_gpu, finetune_gpu
from factory.engines.hf import HFGenerator

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
# A small Llama: several heads and real kernels on rows of up to 4 × 800 tokens, in seconds.
SMALL_LLAMA = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                   num_key_value_heads=8, vocab_size=32000)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_packed_loss_equals_one_by_one_loss(dtype):
    device = torch.device(DEVICE)
    base = finetune_gpu.build_base(SMALL_LLAMA, device, dtype, "sdpa").requires_grad_(False)
    samples = finetune_gpu.make_samples(4, SMALL_LLAMA["vocab_size"], 100, 800)
    diff, leak = finetune_gpu.packing_check(base, samples, device, bf16=dtype == torch.bfloat16)
    if dtype == torch.float32:
        assert diff < leak / 10, (diff, leak)  # a random-init model's leak is small; fp32 noise far smaller
    else:
        assert diff < 1e-2, (diff, leak)  # bf16 rounding only (it hides a leak this small: fp32 above catches it)


@pytest.mark.parametrize("cache", [None, "static"], ids=["dynamic_cache", "static_cache"])
def test_hf_engine_generates_what_one_at_a_time_generate_does(cache):
    model, tok = engine_gpu.build("tiny", DEVICE, torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():  # large weights: clear argmax margins, so rows differ and no near-tie flips a token
        for p in model.parameters():
            p.normal_(0, 0.5)
    longest, out = 64, 16
    prompts = engine_gpu.make_prompts(24, longest, engine_gpu.SHAPES["tiny"]["vocab_size"])
    plain, _ = engine_gpu.plain_loop(model, prompts, out, DEVICE)
    gen = HFGenerator("random-init", model_obj=model, tokenizer=tok, device=DEVICE, max_batch_size=8,
                      max_batch_tokens=8 * (longest + out), cache_implementation=cache,
                      pad_to_multiple_of=longest if cache == "static" else 8)
    results, _ = engine_gpu.engine(gen, prompts, out, DEVICE)
    assert engine_gpu.differing_rows(tok, plain, results) == []
    assert all(r.output_tokens == out for r in results) and len({r.text for r in results}) > len(prompts) // 2
