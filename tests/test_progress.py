"""factory.progress: the line's content, in place on a terminal, throttled plain lines elsewhere."""

from __future__ import annotations

import io

from factory import progress
from factory.progress import Progress, duration


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_line_has_done_total_rate_and_eta():
    clock = Clock()
    bar = Progress("chunk", total=5000, stream=io.StringIO(), clock=clock)
    clock.t += 10
    bar.update(1000)
    assert bar.line() == "ragtune: [chunk] 1,000/5,000 rows (20%), 100 rows/s, ETA 40 s"
    bar = Progress("finetune", total=100, unit="steps", stream=io.StringIO(), clock=clock, start=None)
    bar.update(40, fields={"loss": 2.345678, "tokens/s": 12345})  # resumed at step 40: not this run's work
    clock.t += 20
    bar.update(50)
    assert bar.line() == "ragtune: [finetune] 50/100 steps (50%), loss 2.346, tokens/s 12,345, 0.5 steps/s, ETA 1 min 40 s"
    assert Progress("graph", stream=io.StringIO(), clock=clock).line() == "ragtune: [graph] 0 rows"
    assert [duration(s) for s in (0.4, 59, 61, 3725)] == ["0 s", "59 s", "1 min 01 s", "1 h 02 min"]


def test_plain_lines_are_throttled_and_skip_what_the_summary_says():
    clock, out = Clock(), io.StringIO()
    bar = Progress("ingest", total=1000, stream=out, clock=clock, interval_s=15)
    for _ in range(99):  # 99 updates over 49.5 s
        clock.t += 0.5
        bar.advance(10)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].startswith("ragtune: [ingest] 300/1,000 rows (30%)")
    bar.advance(10)  # done: no line, the stage summary follows
    bar.close()
    assert len(out.getvalue().splitlines()) == 3


def test_every_n_units_and_a_short_run_prints_nothing():
    clock, out = Clock(), io.StringIO()
    bar = Progress("finetune", total=100, unit="steps", stream=out, clock=clock, interval_s=None, every=10, start=None)
    for step in range(1, 36):
        clock.t += 1
        bar.update(step)
    assert [l.split(",")[0] for l in out.getvalue().splitlines()] == [
        "ragtune: [finetune] 10/100 steps (10%)", "ragtune: [finetune] 20/100 steps (20%)",
        "ragtune: [finetune] 30/100 steps (30%)"]
    quick = io.StringIO()
    bar = Progress("chunk", total=60, stream=quick, clock=clock)
    bar.advance(30)
    bar.advance(30)
    assert quick.getvalue() == ""


def test_terminal_line_is_redrawn_in_place_and_log_lines_do_not_tear_it():
    clock, term = Clock(), Terminal()
    bar = Progress("graph", total=10, stream=term, clock=clock)
    bar.update(1)
    clock.t += 0.05
    bar.update(2)  # within the redraw interval: not drawn
    clock.t += 1
    bar.update(3)
    progress.emit("ragtune: a log line", term)
    bar.close()
    assert term.getvalue().count("\n") == 1  # only the log line ends a line
    assert "\r" + "ragtune: [graph] 1/10 rows (10%)" in term.getvalue()
    assert "2/10" not in term.getvalue()
    # The log line is printed on a cleared line, the bar redrawn after it, and erased at close.
    assert "\r\x1b[Kragtune: a log line\n\rragtune: [graph] 3/10 rows" in term.getvalue()
    assert term.getvalue().endswith("\r\x1b[K")


def test_stage_names_the_line_of_a_source_that_does_not_know_it():
    assert progress.current_label() == "ray"
    with progress.stage("graph"):
        assert Progress(progress.current_label(), stream=io.StringIO()).label == "graph"
        with progress.stage("graph/reports"):
            assert progress.current_label() == "graph/reports"
        assert progress.current_label() == "graph"
    assert progress.current_label() == "ray"


def test_ray_datas_false_no_cpu_warning_is_dropped_and_its_other_warnings_kept():
    import logging

    from factory.cluster import configure_data

    configure_data()
    configure_data()  # once more, as every job does in a process whose Ray is reused: one filter
    log = logging.getLogger("ray.data.dataset")

    def shown(message: str) -> bool:
        return bool(log.filter(log.makeRecord(log.name, logging.WARNING, __file__, 0, message, (), None)))

    assert not shown("Warning: The Ray cluster currently does not have any available CPUs. The Dataset job will hang")
    assert shown("Dataset is too large to fit in memory")
    assert len(log.filters) == 1
