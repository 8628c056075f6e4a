"""A tiny local student: a 2-layer Llama with a tokenizer trained on the bundled journal, saved like
any Hub model, so the README walkthrough (and the tests) run finetune and evaluate on a CPU, offline.

    python -m examples.tiny_student runs/tiny-student

It is random, not a language model: its answers are noise, and what it shows is that every step
runs. The script draws its weights wider than a real model's initialization (`--init-std 0.1`), so
its greedy answers are varied words rather than one token repeated (at 0.02 it answers blank
lines, which evaluate rightly counts as failed). Tests load it back through the real
`from_pretrained` path; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def training_text() -> list[str]:
    journal = Path(__file__).resolve().parent / "journal"
    texts = [p.read_text(encoding="utf-8") for p in sorted(journal.glob("*.md"))]
    base = (
        "What can you tell me about the person? The answer is based on the journal. "
        "Question answer reasoning relationship between community report summary finding. "
    )
    return texts + [base * 20]


def build_tiny_llama(path: str | Path, *, hidden: int = 64, layers: int = 2, vocab: int = 1024,
                     init_std: float = 0.02) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(training_text(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="<|end|>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 2048
    fast.save_pretrained(path)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=init_std,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="folder to write the model and tokenizer to")
    p.add_argument("--init-std", type=float, default=0.1, help="standard deviation of the random weights")
    args = p.parse_args(argv)
    print(f"tiny student written to {build_tiny_llama(args.path, init_std=args.init_std)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
