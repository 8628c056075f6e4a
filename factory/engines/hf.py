"""transformers backend: a Ray Data actor pool of `HFGenerator`s.

`HFGenerator` is the batching/generation core and needs no Ray (the GPU
benchmark calls it directly). It applies the chat template, sorts the prompts
of a Ray batch by length and cuts them into micro-batches of at most
`max_batch_size` rows and `max_batch_tokens` padded tokens, left-pads, runs
`generate` once per micro-batch and puts the answers back in input order.
bf16 on a GPU, fp32 on CPU; greedy at temperature 0, else sampled after
`torch.manual_seed(seed)` per micro-batch.

engine_kwargs (all optional): max_batch_size (default: batch_size),
max_batch_tokens (default 32768), length_window (Ray batch = this many
micro-batches, default 4, so there is something to group by length),
cache_implementation ("static" makes transformers compile the decoder on a
GPU), pad_to_multiple_of (default 8, fewer distinct shapes), dtype
("bfloat16" | "float16" | "float32"), num_gpus, trust_remote_code.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from factory.engines.calls import LLM_ERROR, CallResult
from factory.errors import UserError

if TYPE_CHECKING:
    import pyarrow as pa
    from pydantic import BaseModel

    from factory.config import EngineConfig
    from factory.engines.cache import CallJournal

# Told which rows of a chat() call are done (their indices and results), after each micro-batch.
OnDone = Callable[[list[int], list[CallResult]], None]

DEFAULT_BATCH_TOKENS = 32768


def request_extras(cfg: EngineConfig) -> dict:
    return {}


def preflight(cfg: EngineConfig) -> None:
    for name, value in (("model", cfg.model), ("adapter", cfg.adapter)):
        if value and (value.startswith((".", "/", "~")) or Path(value).exists()) and not Path(value).expanduser().exists():
            raise UserError(f"hf engine: {name} folder {value} does not exist")


class HFGenerator:
    """Length-grouped batched chat generation with transformers."""

    def __init__(self, model: str, *, adapter: str | None = None, device: str | None = None,
                 dtype: str | None = None, max_batch_size: int = 16, max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
                 cache_implementation: str | None = None, pad_to_multiple_of: int = 8,
                 trust_remote_code: bool = False, top_p: float = 1.0, seed: int = 0, model_obj: Any = None,
                 tokenizer: Any = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if self.device.startswith("cuda") else torch.float32)
        self.tok = tokenizer or AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        self.tok.padding_side = "left"
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        if model_obj is None:
            model_obj = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype, trust_remote_code=trust_remote_code)
            if adapter:
                from peft import PeftModel

                model_obj = PeftModel.from_pretrained(model_obj, adapter)
        self.model = model_obj.to(self.device).eval()
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.cache_implementation = cache_implementation
        self.pad_to = max(1, pad_to_multiple_of)
        self.top_p = top_p
        self.seed = seed
        cfg = self.model.config
        self.context = getattr(cfg, "max_position_embeddings", None) or self.tok.model_max_length
        eos = self.model.generation_config.eos_token_id if self.model.generation_config.eos_token_id is not None else self.tok.eos_token_id
        # Empty when the model has no end token (the benchmark's random model): run to max_tokens.
        self.eos = {e for e in (eos if isinstance(eos, list) else [eos]) if e is not None}

    @classmethod
    def from_config(cls, cfg: EngineConfig) -> HFGenerator:
        kw = cfg.engine_kwargs
        return cls(
            cfg.model, adapter=cfg.adapter, dtype=kw.get("dtype"),
            max_batch_size=kw.get("max_batch_size", cfg.batch_size),
            max_batch_tokens=kw.get("max_batch_tokens", DEFAULT_BATCH_TOKENS),
            cache_implementation=kw.get("cache_implementation"),
            pad_to_multiple_of=kw.get("pad_to_multiple_of", 8),
            trust_remote_code=kw.get("trust_remote_code", False),
            top_p=cfg.top_p, seed=cfg.seed,
        )

    def encode(self, messages: list[dict]) -> list[int]:
        ids = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        # transformers 5 returns a BatchEncoding here; 4.x returned the ids.
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def chat(self, messages: list[list[dict]], max_tokens: list[int], temperature: list[float],
             on_done: OnDone | None = None) -> list[CallResult]:
        prompts: list[list[int] | None] = []
        results: list[CallResult | None] = []
        for msgs, mt in zip(messages, max_tokens):
            try:
                ids = self.encode(msgs)
            except Exception as exc:  # a malformed conversation fails its row only
                prompts.append(None)
                results.append(CallResult(error=f"{LLM_ERROR}: chat template failed: {type(exc).__name__}: {exc}"))
                continue
            if len(ids) + mt > self.context:
                prompts.append(None)
                results.append(CallResult(error=f"{LLM_ERROR}: prompt of {len(ids)} tokens + max_tokens {mt} "
                                                f"exceeds the model's context of {self.context}"))
                continue
            prompts.append(ids)
            results.append(None)
        todo = [i for i, p in enumerate(prompts) if p is not None]
        done = self.generate([prompts[i] for i in todo], [max_tokens[i] for i in todo], [temperature[i] for i in todo],
                             on_done and (lambda idx, res: on_done([todo[i] for i in idx], res)))
        for i, r in zip(todo, done):
            results[i] = r
        return results  # type: ignore[return-value]

    def micro_batches(self, lengths: list[int], max_tokens: list[int], temperature: list[float]) -> list[list[int]]:
        """Row indices grouped by sampling temperature and prompt length, longest first."""
        order = sorted(range(len(lengths)), key=lambda i: (temperature[i], -lengths[i]))
        batches: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            if cur:
                width = max(lengths[j] + max_tokens[j] for j in cur + [i])
                if (temperature[i] != temperature[cur[0]] or len(cur) >= self.max_batch_size
                        or width * (len(cur) + 1) > self.max_batch_tokens):
                    batches.append(cur)
                    cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
        return batches

    def generate(self, prompts: list[list[int]], max_tokens: list[int], temperature: list[float],
                 on_done: OnDone | None = None) -> list[CallResult]:
        results: list[CallResult | None] = [None] * len(prompts)
        for batch in self.micro_batches([len(p) for p in prompts], max_tokens, temperature):
            try:
                out = self._generate([prompts[i] for i in batch], [max_tokens[i] for i in batch], temperature[batch[0]])
            except Exception as exc:  # e.g. out of memory: the rows fail, the actor lives on
                if self.device.startswith("cuda"):
                    self.torch.cuda.empty_cache()
                out = [CallResult(error=f"{LLM_ERROR}: generation failed: {type(exc).__name__}: {exc}")] * len(batch)
            for i, r in zip(batch, out):
                results[i] = r
            if on_done:
                on_done(batch, out)
        return results  # type: ignore[return-value]

    def _generate(self, prompts: list[list[int]], max_tokens: list[int], temperature: float) -> list[CallResult]:
        torch = self.torch
        from transformers import GenerationConfig

        width = -(-max(len(p) for p in prompts) // self.pad_to) * self.pad_to
        pad = self.tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        gen = GenerationConfig(
            max_new_tokens=max(max_tokens), pad_token_id=pad, eos_token_id=sorted(self.eos) or None,
            do_sample=temperature > 0, cache_implementation=self.cache_implementation,
            **({"temperature": temperature, "top_p": self.top_p, "top_k": 0} if temperature > 0 else {}),
        )
        if temperature > 0:
            torch.manual_seed(self.seed)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
        new = out[:, width:].tolist()
        results = []
        for p, toks, limit in zip(prompts, new, max_tokens):
            toks = toks[:limit]
            stop = next((k for k, t in enumerate(toks) if t in self.eos), None)
            reason = "stop" if stop is not None else "length"
            # Counted like vLLM: the end-of-sequence token is a generated token.
            toks = toks[: stop + 1] if stop is not None else toks
            text = self.tok.decode(toks, skip_special_tokens=True)
            results.append(CallResult(text=text, input_tokens=len(p), output_tokens=len(toks), finish_reason=reason))
        return results


def generate(ds, cfg: EngineConfig, output_model: type[BaseModel] | None, journal: Callable[[], CallJournal]):
    import ray
    import ray.data

    kw = cfg.engine_kwargs
    gpus = kw.get("num_gpus", 1 if cfg.accelerator_type or ray.cluster_resources().get("GPU") else 0)
    resources: dict[str, Any] = {"num_gpus": gpus} if gpus else {"num_cpus": 1}
    if cfg.accelerator_type:
        resources["accelerator_type"] = cfg.accelerator_type
    return ds.map_batches(
        _Worker,
        fn_constructor_kwargs={"cfg": cfg, "output_model": output_model, "journal": journal},
        batch_size=kw.get("max_batch_size", cfg.batch_size) * kw.get("length_window", 4),
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=cfg.concurrency),
        **resources,
    )


class _Worker:
    def __init__(self, cfg: EngineConfig, output_model: type[BaseModel] | None, journal: Callable[[], CallJournal]):
        try:
            self.gen = HFGenerator.from_config(cfg)
        except (OSError, ValueError) as exc:  # missing model / bad id: the user's to fix
            raise UserError(f"hf engine: cannot load model '{cfg.model}': {type(exc).__name__}: {exc}") from None
        self.output_model = output_model
        self.journal = journal()

    def __call__(self, batch: pa.Table) -> pa.Table:
        from factory.engines.protocol import result_table

        rows = batch.to_pylist()
        keys = [r["key"] for r in rows]

        def cache(idx: list[int], results: list[CallResult]) -> None:
            # Each micro-batch's calls are cached as it finishes, not when the whole Ray batch does.
            self.journal.add(result_table([keys[i] for i in idx], results, self.output_model))

        results = self.gen.chat([r["messages"] for r in rows], [r["max_tokens"] for r in rows],
                                [r["temperature"] for r in rows], on_done=cache)
        self.journal.flush()
        return result_table(keys, results, self.output_model)
