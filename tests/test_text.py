"""The text toolkit: one sentence splitter, one token estimate, one reasoning pattern for every stage."""

from __future__ import annotations

import numpy as np

from factory.graph.reports import _line_costs
from factory.text import (
    content_words,
    estimate_tokens,
    norm_key,
    plain,
    plain_sentences,
    sentence_spans,
    sentences,
    table_cells,
    without_think,
)


def test_sentences_end_at_full_stops_but_not_after_abbreviations_or_initials():
    text = ("Dr. Okafor came, e.g. with Mr. Webb. J. R. Brandt left! So did I. Then No. 5 won. "
            "The answer was no. “Really?” she asked. (Aside.) Next")
    assert sentences(text) == ["Dr. Okafor came, e.g. with Mr. Webb.", "J. R. Brandt left!", "So did I.",
                               "Then No. 5 won.", "The answer was no.", "“Really?” she asked.", "(Aside.)", "Next"]
    # No capital after the stop, no new sentence: a decimal, a lower-case word, a file name.
    assert sentences("Use 8.5 g of coffee. it is fine. See notes.txt for more.") == [
        "Use 8.5 g of coffee. it is fine.", "See notes.txt for more."]


def test_lines_are_markdown_blocks():
    text = ("# Saturday 8 February 2025\nRain all day. A soft\nwrapped line.\n\nA new paragraph\n"
            "- a list item. Two\n1. First step. Second step\n> a quote\n"
            "| E02 | Sensor fault. Call Dr. Webb | 3.5 |\n|---|---|---|\n")
    assert sentences(text) == [
        "# Saturday 8 February 2025", "Rain all day.", "A soft wrapped line.", "A new paragraph",
        "- a list item.", "Two", "1. First step.", "Second step", "> a quote",
        "| E02 | Sensor fault. Call Dr. Webb | 3.5 |", "|---|---|---|"]
    # Spans point into the text: chunk boundaries are their starts.
    assert [" ".join(text[a:b].split()) for a, b in sentence_spans(text)] == sentences(text)
    assert all(not text[a].isspace() and not text[b - 1].isspace() for a, b in sentence_spans(text))
    assert sentences("") == [] == sentence_spans("  \n\n ")


def test_plain_sentences_drop_markdown_and_split_table_cells():
    assert plain("## **Water** [quality](https://x.y/z) and `the filter`") == "Water quality and the filter"
    assert plain("- a list item") == "a list item" and plain("12. Step") == "Step"
    assert plain("| E02 | Quay Road sensor fault |") == "E02; Quay Road sensor fault."
    assert plain("|---|:--:|") == "" and table_cells("|---|:--:|") == []
    assert plain_sentences("Dr. Okafor came. Then Mr. Webb left!\n- a list item\n| Soft | below 7 |\n|--|--|") == [
        "Dr. Okafor came.", "Then Mr. Webb left!", "a list item", "Soft", "below 7"]


def test_words_keys_and_token_estimates():
    assert content_words("I wrote about the Harwick Courier’s photographer") == ["harwick", "courier's", "photographer"]
    assert norm_key("The  “Old Mill” Gardens") == norm_key("old mill gardens") == "old mill gardens"
    # Rounded up: a budget is never under-counted; nothing costs nothing.
    assert [estimate_tokens(t) for t in ("", "x", "x" * 4, "x" * 5, "x" * 400, None)] == [0, 1, 1, 2, 100, 0]
    # The reports' vectorized count of numbered record lines is the same estimate.
    lengths = np.array([0, 1, 2, 3, 4, 5, 17, 100, 333] * 3)
    assert _line_costs(lengths).tolist() == [estimate_tokens(f"{n}|" + "x" * k) + 1 for n, k in enumerate(lengths, 1)]


def test_reasoning_is_removed_closed_unclosed_and_in_any_case():
    assert without_think("<think>\nhmm {not this}\n</think>\n\nIt rained.") == "It rained."
    assert without_think(" <THINK>a</Think> first <think>b</think> last ") == "first  last"
    assert without_think("<think>cut off while thinking") == "" == without_think(None)
    assert without_think("No reasoning here.") == "No reasoning here."
