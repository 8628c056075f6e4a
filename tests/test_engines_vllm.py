"""The vllm backend up to the processor boundary (no vLLM here).

The processor is built with the real `ray.data.llm.build_processor`; its
chat-template, tokenize and detokenize stages run for real on the tiny Llama;
only the vLLM engine stage is replaced by a stand-in that emits what that
stage emits (tokens, counts, `__inference_error__`).
"""

from __future__ import annotations

import importlib.util
import json

import pyarrow as pa
import pytest
from pydantic import BaseModel

from factory.config import EngineConfig
from factory.engines import base, protocol, run_llm, vllm
from factory.errors import UserError
from factory.pipeline import StageRecord
from tests.support.llm_calls import empty_run


class Verdict(BaseModel):
    winner: str
    reason: str


@pytest.fixture
def cfg(tiny_llama) -> EngineConfig:
    return EngineConfig(
        engine="vllm", model=str(tiny_llama), concurrency=3, batch_size=4, accelerator_type="H100",
        max_tokens=32, temperature=0.0, seed=7,
        engine_kwargs={"tensor_parallel_size": 2, "max_model_len": 512, "processor": {"max_concurrent_batches": 2}},
    )


def request_rows(n: int) -> pa.Table:
    """Real request rows, made by the same functions run_llm uses."""
    table = pa.Table.from_pylist([
        {"id": f"r{i}", "messages": [{"role": "system", "content": "Judge."},
                                     {"role": "user", "content": f"Which answer is better? {i}"}]}
        for i in range(n)
    ])
    keyed = base._add_keys(table, engine="vllm", model="m", params={}, max_tokens=32, temperature=0.0)
    return pa.Table.from_pydict({
        "key": keyed.column(base.KEY), "messages": keyed.column("messages"),
        "max_tokens": keyed.column(base.MAX_TOKENS), "temperature": keyed.column(base.TEMPERATURE),
    })


def test_processor_config_as_documented(cfg, tiny_llama):
    pc = vllm.processor_config(cfg)
    assert pc.model_source == str(tiny_llama)
    assert pc.engine_kwargs["tensor_parallel_size"] == 2 and pc.engine_kwargs["max_model_len"] == 512
    assert "processor" not in pc.engine_kwargs
    assert (pc.concurrency, pc.batch_size, pc.accelerator_type) == (3, 4, "H100")
    assert pc.should_continue_on_error is True and pc.max_concurrent_batches == 2
    lora = vllm.processor_config(cfg.model_copy(update={"adapter": "/ckpt/adapters/student"}))
    assert lora.engine_kwargs["enable_lora"] is True and lora.dynamic_lora_loading_path == "/ckpt/adapters"


def test_build_processor_stages(ray_session, cfg):
    proc = vllm.build(cfg, Verdict)
    assert proc.list_stage_names() == ["ChatTemplateStage", "TokenizeStage", "vLLMEngineStage", "DetokenizeStage"]
    kw = proc.get_stage_by_name("vLLMEngineStage").get_dataset_map_batches_kwargs(batch_size=4, data_column="__data")
    assert kw["accelerator_type"] == "H100" and kw["compute"].max_size == 3
    assert kw["fn_constructor_kwargs"]["should_continue_on_error"] is True
    assert kw["fn_constructor_kwargs"]["engine_kwargs"]["tensor_parallel_size"] == 2


def test_preprocess_rows(cfg):
    row = request_rows(1).to_pylist()[0]
    out = vllm.preprocess_row(row, top_p=0.9, seed=7, schema=json.dumps(Verdict.model_json_schema()), lora="student")
    assert out["messages"] == row["messages"] and out["model"] == "student"
    params = out["sampling_params"]
    assert (params["max_tokens"], params["temperature"], params["top_p"], params["seed"]) == (32, 0.0, 0.9, 7)
    assert json.loads(params["structured_outputs"]["json"]) == Verdict.model_json_schema()
    plain = vllm.preprocess_row(row, top_p=1.0, seed=0, schema=None, lora=None)
    assert "structured_outputs" not in plain["sampling_params"] and "model" not in plain


def test_processor_pipeline_around_a_stand_in_engine(ray_session, cfg):
    proc = vllm.build(cfg, Verdict)
    answers = {0: '{"winner": "A", "reason": "more detail"}', 1: '```json\n{"winner": "B", "reason": "x",}\n```',
               2: "no idea"}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.model)

    def engine_stand_in(row: dict) -> dict:
        data = dict(row["__data"])
        i = int(data["messages"][-1]["content"].split()[-1])
        assert data["sampling_params"]["structured_outputs"]["json"]
        assert data["prompt"].endswith("<|assistant|>\n") and len(data["tokenized_prompt"]) > 5
        if i == 3:  # what vLLM reports for a prompt over max_model_len
            data.update({"__inference_error__": "prompt length 9000 exceeds max_model_len 512", "generated_tokens": []})
        else:
            ids = tok(answers[i], add_special_tokens=False)["input_ids"]
            data.update({"generated_tokens": ids, "num_input_tokens": len(data["tokenized_prompt"]),
                         "num_generated_tokens": len(ids), "__inference_error__": ""})
        return {"__data": data}

    ds = ray_session.data.from_arrow(request_rows(4)).map(proc.preprocess)
    for name in proc.list_stage_names():
        stage = proc.get_stage_by_name(name)
        if name == "vLLMEngineStage":
            ds = ds.map(engine_stand_in)
        else:
            kw = stage.get_dataset_map_batches_kwargs(batch_size=4, data_column="__data")
            # Three one-CPU actor pools would queue behind each other on a two-CPU test box.
            ds = ds.map_batches_internal(stage.fn, **{**kw, "num_cpus": 0.25})
    ds = ds.map(proc.postprocess).map(vllm.normalize_row)
    rows = {r["key"]: r for r in ds.take_all()}
    keys = request_rows(4).column("key").to_pylist()
    out = {i: rows[k] for i, k in enumerate(keys)}
    assert set(out[0]) == set(protocol.RESULT_SCHEMA.names)
    assert json.loads(out[0]["parsed"]) == {"winner": "A", "reason": "more detail"} and out[0]["error"] is None
    assert json.loads(out[1]["parsed"])["winner"] == "B"
    assert out[2]["generated_text"] == "no idea" and out[2]["error"].startswith("invalid_output")
    assert out[3]["error"] == "llm_error: prompt length 9000 exceeds max_model_len 512" and out[3]["generated_text"] is None
    assert out[0]["input_tokens"] > 5 and out[0]["output_tokens"] > 0 and out[0]["finish_reason"] == "stop"
    pa.Table.from_pylist(list(out.values()), schema=protocol.RESULT_SCHEMA)  # the shape run_llm streams


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_run_llm_without_vllm_is_a_clear_user_error(ray_session, tmp_path, cfg):
    ds = ray_session.data.from_items([{"id": "a", "messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(UserError, match="needs vLLM on the GPU nodes"):
        run_llm(empty_run(tmp_path), StageRecord("t"), ds, cfg, "judge")
