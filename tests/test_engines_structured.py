"""parse_output, call keys and the call cache on their own (no Ray, no server)."""

from __future__ import annotations

import pyarrow as pa
from pydantic import BaseModel, Field

from factory.engines.cache import COMPACT_AT, CallCache, call_key
from factory.engines.structured import finish, parse_output, schema_hash
from tests.support.llm_calls import empty_run


class Entity(BaseModel):
    name: str
    type: str
    description: str = ""


class Extraction(BaseModel):
    entities: list[Entity] = Field(default_factory=list)
    done: bool


def test_parse_output_accepts_what_models_emit():
    cases = [
        '{"entities": [{"name": "Ada", "type": "person"}], "done": true}',
        '```json\n{"entities": [], "done": false}\n```',
        '<think>first {"done": "maybe"}</think>{"entities": [], "done": true}',
        'Here you go:\n{"entities": [{"name": "Ada", "type": "person",}], "done": true,}\nThanks',
        "{'entities': [], 'done': True}",
        '{"entities": [{"name": "Ada", "type": "person"}], "done": true',  # cut off before the last brace
    ]
    for text in cases:
        value, err = parse_output(text, Extraction)
        assert err is None, (text, err)
        assert isinstance(value, Extraction)


def test_parse_output_reports_one_line_reasons():
    assert parse_output("", Extraction) == (None, "empty output")
    assert parse_output(None, Extraction) == (None, "empty output")
    value, err = parse_output("I would rather not.", Extraction)
    assert value is None and err == "no JSON found in the output"
    value, err = parse_output('{"entities": [{"name": "Ada"}], "done": "perhaps"}', Extraction)
    assert value is None and err.startswith("schema mismatch at entities.0.type: Field required (and 1 more)")


def test_finish_prefixes_errors_and_dumps_json():
    assert finish('{"done": true}', Extraction) == ('{"entities":[],"done":true}', None)
    parsed, err = finish("nope", Extraction)
    assert parsed is None and err.startswith("invalid_output: ")
    assert finish("free text", None) == (None, None)


def test_call_key_depends_on_what_changes_the_answer():
    msgs = [{"role": "user", "content": "hi"}]
    params = {"max_tokens": 10, "temperature": 0.0, "schema": schema_hash(Extraction)}
    k = call_key("openai", "m", msgs, params)
    assert k == call_key("openai", "m", [{"content": "hi", "role": "user", "name": "x"}], dict(reversed(params.items())))
    assert len({k, call_key("hf", "m", msgs, params), call_key("openai", "m2", msgs, params),
                call_key("openai", "m", [{"role": "user", "content": "hi!"}], params),
                call_key("openai", "m", msgs, {**params, "temperature": 0.1}),
                call_key("openai", "m", msgs, {**params, "schema": schema_hash(Entity)})}) == 6


def test_cache_appends_dedupes_ignores_partial_files_and_compacts(tmp_path):
    cache = CallCache(empty_run(tmp_path), "t")
    assert cache.load().num_rows == 0

    def part(keys, text):
        return pa.table({"key": keys, "task": ["t"] * len(keys), "generated_text": [text] * len(keys)})

    cache.append(part(["a", "b"], "old"))
    cache.append(part(["b", "c"], "new"))
    # A file half-written when the process died has a hidden temporary name and is never read.
    (tmp_path / "run" / "_cache" / "llm" / "t" / ".part-x.parquet.tmp").write_bytes(b"PAR1 garbage")
    got = dict(zip(*cache.load().select(["key", "generated_text"]).to_pydict().values()))
    assert got == {"a": "old", "b": "new", "c": "new"}
    for i in range(COMPACT_AT):
        cache.append(part([f"k{i}"], "x"))
    cache.compact()
    assert len(cache.files()) == 1 and cache.load().num_rows == 3 + COMPACT_AT


def test_journal_writes_finished_calls_and_merges_only_new_parts(tmp_path):
    from factory.engines.protocol import result_table
    from factory.engines.cache import CallJournal
    from factory.engines.calls import CallResult

    cache = CallCache(empty_run(tmp_path), "t")
    journal = CallJournal(cache, "openai", "m", background=False)
    # Transport errors are not journaled: a rerun retries them.
    journal.add(result_table(["a", "b"], [CallResult(text="ok"), CallResult(error="llm_error: HTTP 500")], None))
    journal.add(result_table(["c"], [CallResult(text="ok")], None))
    assert cache.load().num_rows == 0  # queued until a write
    journal.flush()
    got = cache.load()
    assert sorted(got.column("key").to_pylist()) == ["a", "c"] and set(got.column("engine").to_pylist()) == {"openai"}
    assert len(cache.files()) == 1

    cache.compact()  # below COMPACT_AT parts: nothing to do
    for i in range(COMPACT_AT):
        journal.add(result_table([f"k{i}"], [CallResult(text="x")], None))
        journal.flush()
    cache.compact(journal_only=True)
    merged = cache.files()
    assert len(merged) == 1 and cache.load().num_rows == 2 + COMPACT_AT
    for i in range(COMPACT_AT - 1):
        journal.add(result_table([f"n{i}"], [CallResult(text="x")], None))
        journal.flush()
    cache.compact(journal_only=True)  # 31 new parts (the merged one does not count): left alone
    assert len(cache.files()) == COMPACT_AT and merged[0] in cache.files()
    journal.add(result_table(["last"], [CallResult(text="x")], None))
    journal.flush()
    cache.compact(journal_only=True)  # now 32 new parts: merged into a second file, the first untouched
    assert len(cache.files()) == 2 and merged[0] in cache.files()
    assert cache.load().num_rows == 2 + 2 * COMPACT_AT


def test_background_journal_writes_without_a_flush(tmp_path):
    import time

    from factory.engines.protocol import result_table
    from factory.engines.cache import CallJournal
    from factory.engines.calls import CallResult

    cache = CallCache(empty_run(tmp_path), "t")
    journal = CallJournal(cache, "openai", "m")
    journal.add(result_table(["a"], [CallResult(text="ok")], None))
    deadline = time.monotonic() + 30
    while cache.load().num_rows == 0:
        assert time.monotonic() < deadline, "the journal thread never wrote"
        time.sleep(0.01)
