"""The transformers backend on the tiny local Llama: the generation core alone, then through run_llm on Ray."""

from __future__ import annotations

import pytest

from factory.config import EngineConfig
from factory.engines import run_llm
from factory.engines.hf import HFGenerator
from factory.pipeline import StageRecord
from tests.support.llm_calls import by_id, empty_run


def conversation(k: int) -> list[dict]:
    return [{"role": "system", "content": "Answer from the journal."},
            {"role": "user", "content": "What can you tell me about the person? " * k}]


@pytest.fixture(scope="module")
def lively(tiny_llama):
    """The tiny Llama re-initialised with large weights, so greedy decoding varies from row to row."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return HFGenerator(str(tiny_llama), model_obj=model, max_batch_size=3, max_batch_tokens=400)


def test_batched_generation_equals_one_at_a_time(lively):
    msgs = [conversation(k) for k in (1, 5, 2, 8, 3, 1, 6)]
    batched = lively.chat(msgs, [10] * 7, [0.0] * 7)
    single = [lively.chat([m], [10], [0.0])[0] for m in msgs]
    assert [r.text for r in batched] == [r.text for r in single]
    assert len({r.text for r in batched}) > 2  # the rows really differ
    assert [r.input_tokens for r in batched] == [len(lively.encode(m)) for m in msgs]
    assert all(0 < r.output_tokens <= 10 and r.finish_reason in ("stop", "length") for r in batched)


def test_micro_batches_group_by_length_and_temperature(lively):
    lengths = [5, 50, 6, 49, 7, 48, 100]
    batches = lively.micro_batches(lengths, [10] * 7, [0.0, 0.0, 0.0, 0.0, 0.7, 0.7, 0.0])
    # Greedy rows longest first, three per batch at most, tokens capped; sampled rows apart.
    assert batches == [[6, 1, 3], [2, 0], [5, 4]]
    assert all(max(lengths[i] + 10 for i in b) * len(b) <= 400 for b in batches)


def test_row_limits_seeded_sampling_and_too_long(lively):
    msgs = [conversation(1), conversation(2), conversation(3)]
    out = lively.chat(msgs, [3, 9, 5], [0.0, 0.0, 0.0])
    assert [r.output_tokens <= m for r, m in zip(out, [3, 9, 5])] == [True] * 3
    a = lively.chat(msgs, [8] * 3, [1.0] * 3)
    b = lively.chat(msgs, [8] * 3, [1.0] * 3)
    assert [r.text for r in a] == [r.text for r in b]
    long = lively.chat([conversation(1)], [5000], [0.0])[0]
    assert long.text is None and "exceeds the model's context of 2048" in long.error


def test_run_llm_with_hf_actor_pool(ray_session, tmp_path, tiny_llama):
    rows = [{"id": f"q{k}", "messages": conversation(k), "max_tokens": 4 + k} for k in range(1, 7)]
    rows.append({"id": "too-long", "messages": conversation(1), "max_tokens": 4000})
    cfg = EngineConfig(engine="hf", model=str(tiny_llama), batch_size=2, max_tokens=6)
    run = empty_run(tmp_path)
    rec = StageRecord("t")
    out = by_id(run_llm(run, rec, ray_session.data.from_items(rows), cfg, "hf_demo"))
    assert set(out) == {r["id"] for r in rows}
    for k in range(1, 7):
        r = out[f"q{k}"]
        assert r["error"] is None and isinstance(r["generated_text"], str)
        assert 0 < r["output_tokens"] <= 4 + k and r["engine"] == "hf" and r["model"] == str(tiny_llama)
    assert out["too-long"]["error"].startswith("llm_error: prompt of")
    assert rec.drops == {"llm_error": 1}
    tokens = rec.tokens[f"hf:{tiny_llama}"]
    assert tokens["calls"] == 7 and tokens["output"] == sum(out[f"q{k}"]["output_tokens"] for k in range(1, 7))
    # A rerun is served from the cache: same texts, no new tokens spent.
    again = StageRecord("t")
    assert by_id(run_llm(run, again, ray_session.data.from_items(rows[:6]), cfg, "hf_demo")).keys() == {f"q{k}" for k in range(1, 7)}
    assert again.tokens == {} and again.stats["llm"]["hf_demo"]["cache_hits"] == 6
