"""The `generate` job: the ordered stages that turn a corpus into the qa table."""

from __future__ import annotations

from factory import chunking, graph, ingest, synth
from factory.graph import reports
from factory.config import Config
from factory.errors import UserError
from factory.pipeline import Run, Stage

STAGES: list[Stage] = [
    Stage("ingest", ingest.ingest, sections=("corpus", "dedup"), fingerprint_extra=ingest.input_listing),
    Stage("chunk", chunking.chunk, sections=("chunking",), inputs=("ingest",)),
    Stage("graph", graph.build_graph, sections=("graph", "teacher"), inputs=("chunk",)),
    Stage("reports", reports.write_reports, sections=("graph", "teacher"), inputs=("graph",)),
    Stage("synthesis", synth.synthesize, sections=("synth", "teacher", "judge", "seed"), inputs=("chunk", "graph", "reports")),
]


def generate(cfg: Config, force: bool = False, until: str | None = None) -> Run:
    """Run every stage that is not up to date (all of them with `force`), up to `until`."""
    from factory.cluster import ensure_ray
    from factory.engines.preflight import preflight_stages

    run = Run(cfg)
    names = [s.name for s in STAGES]
    if until and until not in names:
        raise UserError(f"--until {until}: no such stage (stages: {', '.join(names)})")
    stop = names.index(until) + 1 if until else len(STAGES)
    # A bad engine (unreachable URL, rejected key) fails now, before Ray starts and ingest runs.
    preflight_stages(run, STAGES[:stop], force)
    ensure_ray(cfg)
    run.run_stages(STAGES[:stop], force=force)
    if not until:
        from factory.publish import write_card

        # The card's front matter is what makes the run folder loadable by datasets.load_dataset.
        write_card(run)
    return run
