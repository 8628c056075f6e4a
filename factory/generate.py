"""The `generate` job: the ordered stages that turn a corpus into the qa table."""

from __future__ import annotations

from factory import chunking, graph, ingest, synth
from factory.config import Config
from factory.errors import UserError
from factory.graph import reports
from factory.pipeline import Run, Stage, plan, run_stages

GRAPH_TABLES = ("entities", "relationships", "communities")

STAGES: list[Stage] = [
    Stage("ingest", ingest.ingest, sections=("corpus", "dedup"), writes=("documents",),
          fingerprint_extra=ingest.input_listing),
    Stage("chunk", chunking.chunk, sections=("chunking",), inputs=("ingest",), reads=("documents",), writes=("chunks",)),
    Stage("graph", graph.build_graph, sections=("graph", "teacher"), inputs=("chunk",), reads=("chunks",),
          writes=GRAPH_TABLES, roles=("teacher",)),
    Stage("reports", reports.write_reports, sections=("graph", "teacher"), inputs=("graph",),
          reads=("chunks", *GRAPH_TABLES), writes=("community_reports",), roles=("teacher",)),
    Stage("synthesis", synth.synthesize, sections=("synth", "teacher", "judge", "seed"), inputs=("chunk", "graph", "reports"),
          reads=("documents", "chunks", *GRAPH_TABLES, "community_reports"), writes=("qa",), roles=("teacher", "judge")),
]


def generate(cfg: Config, force: bool = False, until: str | None = None) -> Run:
    """Run every stage that is not up to date (all of them with `force`), up to `until`."""
    from factory.card import write_card
    from factory.cluster import ensure_ray
    from factory.engines.preflight import preflight

    run = Run(cfg)
    names = [s.name for s in STAGES]
    if until and until not in names:
        raise UserError(f"--until {until}: no such stage (stages: {', '.join(names)})")
    stop = names.index(until) + 1 if until else len(STAGES)
    steps = plan(run, STAGES, force)
    # A bad engine (unreachable URL, rejected key) fails now, before Ray starts and ingest runs.
    preflight(cfg, steps[:stop])
    ensure_ray(cfg)
    run_stages(run, STAGES, force=force, until=until, steps=steps)
    if not until:
        # The card's front matter is what makes the run folder loadable by datasets.load_dataset.
        write_card(run)
    return run
