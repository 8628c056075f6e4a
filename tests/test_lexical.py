"""factory/synth/lexical.py: the columnar measures must equal the per-text functions of factory/text.py
they stand for, on texts where splitting by bytes could part from splitting by regex."""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa

from factory.synth import lexical
from factory.synth.report import MEASURE, NEAR_EQUAL
from factory.synth.extractive import question_terms
from factory.text import content_words, relevance, shingles, support, words
from tests.support.texts import TRICKY


def test_words_and_shingle_hashes_are_those_of_the_text_functions():
    vocab = lexical.Vocabulary()
    texts = TRICKY + [None, "ｆｕｌｌwidth Ｗords"]
    row, word = vocab.encode(pa.array(texts, pa.string()))
    row_hashes, hashes = lexical.shingle_hashes(row, word, vocab)
    names = {i: w for w, i in vocab.ids.items()}
    for i, text in enumerate(texts):
        mine = word[row == i]
        assert [names[w] for w in mine] == words(text or "")
        assert [names[w] for w in mine if vocab.content[w]] == content_words(text or "")
        assert set(hashes[row_hashes == i].tolist()) == {zlib.crc32(g.encode()) for g in shingles(text or "")}


def test_support_is_text_support_with_each_evidence_split_once():
    evidence = ["Maya planted tomatoes in the allotment on Saturday.", TRICKY[1], "", TRICKY[0] + "\n\n" + TRICKY[9]]
    answers = ["Maya planted tomatoes on Sunday.", "The café in Istanbul was naïve.", "Tomatoes grew well.",
               "O’Neil's co-op met Dr. Smith.", "the of and"]
    of = [0, 1, 2, 3, 0]
    vocab = lexical.Vocabulary()
    row, word = vocab.encode(pa.array(evidence))
    in_evidence = lexical.evidence_words(np.arange(len(evidence)), row, word, vocab)
    row, word = vocab.encode(pa.array(answers))
    content = vocab.content[word]
    got = lexical.support(row[content], word[content], np.asarray(of), in_evidence)
    assert got.tolist() == [support(a, evidence[e]) for a, e in zip(answers, of)]
    assert got[4] == 1.0 and got[2] == 0.0  # no content words; no evidence


def test_relevance_is_text_relevance_of_the_question_terms():
    questions = ["What did Maya’s co-op plant in the allotment?", "What are the main themes across the notes?",
                 "Who met O’Brien in March?", "", None, TRICKY[1], "What happened on Monday 3 June 2025?", "Why?"]
    cues = [None, ["proud"], [], ["Growth", ""], None, ["café"], None, [""]]
    answers = [TRICKY[0] + " The co-op planted beans. It rained.\n\n# Plants\n- Maya plants tomatoes. Dr. Smith came.",
               "Proud of the garden. Growth everywhere.", TRICKY[9], "", None, TRICKY[1] + "\n| café | ſtraße |",
               "Nothing.", "Because."]
    got = lexical.relevance(pa.array(questions, pa.string()), pa.array(cues, pa.list_(pa.string())), answers,
                            lexical.Vocabulary())
    want = [relevance(question_terms(q or "", c), a or "") for q, c, a in zip(questions, cues, answers)]
    assert [None if np.isnan(g) else g for g in got.tolist()] == want
    assert want[0] not in (None, 0.0, 1.0) and want[1] == 0.5 and want[6] is None  # partial, a cue's match, no terms


def test_a_text_has_one_signature_whatever_batch_it_is_in():
    """Signatures are made per batch on different workers and compared on the driver."""
    minhash = lexical.MinHash(num_perm=64, bands=12, rows=5, seed=1)
    alone = minhash.signatures(pa.array([TRICKY[0]]))
    mixed = minhash.signatures(pa.array(TRICKY[1:5] + [TRICKY[0]]))
    assert (alone[0] == mixed[-1]).all()
    assert not (lexical.MinHash(num_perm=64, bands=12, rows=5, seed=2).signatures(pa.array([TRICKY[0]])) == alone).all()


def test_near_pairs_are_every_pair_the_signatures_call_near_equal():
    """LSH with 16 bands of 8 cannot miss a pair at >= 0.9 (at most 12 of 128 values differ, so 4 bands
    are whole): the pairs must be exactly those a comparison of every pair finds."""
    rng = np.random.default_rng(7)
    base = rng.integers(0, 2**32, (30, MEASURE.num_perm), dtype=np.uint32)
    sig = [base]
    for changed in (0, 0, 3, 10, 12, 13, 20):  # identical copies, near twins, and some just too far
        copy = base[rng.integers(0, len(base), 6)]
        for c in copy:
            c[rng.choice(MEASURE.num_perm, changed, replace=False)] ^= np.uint32(1)
        sig.append(copy)
    sig = np.concatenate(sig)
    group, neighbours = MEASURE.near_pairs(sig, NEAR_EQUAL)
    same = (sig[:, None, :] == sig[None, :, :]).mean(axis=2)
    assert ((group[:, None] == group[None, :]) == (same == 1)).all()
    near = np.nonzero((same >= NEAR_EQUAL) & (same < 1))
    found = {(int(group[a]), int(group[b])) for a, b in zip(*near)}
    assert found and found == {(a, b) for a, close in neighbours.items() for b in close}
