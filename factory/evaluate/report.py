"""The evaluation report: report.md (plots beside it), a self-contained report.html
(plots inlined as base64 PNG), results.parquet (eval_results schema) and config.yaml.

Both documents render the same sections, so they always carry the same numbers.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

import schemas
from factory.config import Config
from factory.pipeline import PARQUET_ARGS, Run


@dataclass
class Section:
    heading: str
    text: list[str] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    figure: tuple[str, bytes] | None = None  # (file name, PNG bytes)


def fmt(value: float | None, low: float | None = None, high: float | None = None) -> str:
    if value is None or value != value:
        return "n/a"
    if low is None or low != low:
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---- figures --------------------------------------------------------------------------
def _bars(groups: list[str], series: dict[str, list[tuple[float, float, float]]], ylabel: str, title: str,
          hline: float | None = None) -> bytes:
    """Grouped bars with 95% interval whiskers; series name -> (value, low, high) per group."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(min(14, max(5, 0.45 * len(groups) * max(1, len(series)) + 2)), 3.6))
    width = 0.8 / max(1, len(series))
    for i, (name, vals) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        v = [x[0] for x in vals]
        err = [[max(0.0, x[0] - x[1]) if x[1] == x[1] else 0 for x in vals],
               [max(0.0, x[2] - x[0]) if x[2] == x[2] else 0 for x in vals]]
        ax.bar(xs, v, width, yerr=err, capsize=3, label=name)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylim(0, 1.05)
    ax.set_xticks(range(len(groups)), groups, rotation=20 if len(groups) > 4 else 0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig)


def _heatmaps(pairs: list[tuple[str, str]], criteria: list[str], kinds: list[str], rate: dict) -> bytes:
    plt = _plt()
    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * (0.75 * len(kinds) + 2.4), rows * (0.4 * len(criteria) + 1.4)),
                             squeeze=False)
    for ax in axes.flat[len(pairs):]:
        ax.axis("off")
    for ax, (a, b) in zip(axes.flat, pairs):
        grid = [[rate.get((a, b, c, k), float("nan")) for k in kinds] for c in criteria]
        ax.imshow(grid, vmin=0, vmax=1, cmap="RdBu", aspect="auto")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                dark = v == v and abs(v - 0.5) > 0.3
                ax.text(j, i, "–" if v != v else f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
        ax.set_xticks(range(len(kinds)), kinds, rotation=30, fontsize=8)
        ax.set_yticks(range(len(criteria)), criteria, fontsize=8)
        ax.set_title(f"{a} vs {b}", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _lengths(answers: list[dict]) -> bytes:
    plt = _plt()
    by_sys: dict[str, list[int]] = defaultdict(list)
    for r in answers:
        if r["n_tokens"] is not None:
            by_sys[r["system"]].append(r["n_tokens"])
    names = sorted(by_sys)
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names) + 2), 3.6))
    ax.boxplot([by_sys[n] for n in names], showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20 if len(names) > 4 else 0)
    ax.set_ylabel("answer length (words)")
    ax.set_title("Answer length by system")
    return _png(fig)


# ---- sections -------------------------------------------------------------------------
def sections(cfg: Config, source: str, engines: dict[str, dict], answers: list[dict], results: list[dict],
             stats: dict, judged: bool, pairs: list[tuple[str, str]] | None = None) -> list[Section]:
    kinds = Counter(r["kind"] for r in {r["question_id"]: r for r in answers}.values())
    out = [_headline(cfg, engines, answers, results, stats, judged, pairs or []), Section(
        "Setup",
        [f"Questions: the `test` split of `{source}`, {sum(kinds.values())} questions "
         f"({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}).",
         _judge_text(cfg, stats, judged),
         f"Config hash `{cfg.hash}`; the exact config is in `config.yaml`."],
        ["system", "engine"], [[s, _engine_text(e)] for s, e in engines.items()],
    )]
    out += _context_sections(stats)
    out += _win_sections(results, stats.get("criteria", [])) if judged else []
    out += _metric_sections(answers, results)
    bench = [r for r in results if r["metric"] in ("benchmark", "benchmark_change")]
    if bench:
        groups = sorted({r["kind"] for r in bench if r["metric"] == "benchmark"})
        systems = sorted({r["system_a"] for r in bench if r["metric"] == "benchmark"})
        acc = {(r["kind"], r["system_a"]): (r["value"], r["ci_low"], r["ci_high"]) for r in bench if r["metric"] == "benchmark"}
        out.append(Section(
            "General ability (benchmark file)",
            ["Accuracy of base and student on the user's benchmark; change = student − base with a paired interval."],
            ["benchmark", "metric", "system", "n", "value [95% CI]"],
            [[r["kind"], r["metric"], r["system_a"] + (f" − {r['system_b']}" if r["system_b"] else ""), str(r["n"]),
              fmt(r["value"], r["ci_low"], r["ci_high"])] for r in bench],
            ("benchmark.png", _bars(groups, {s: [acc.get((g, s), (float("nan"),) * 3) for g in groups] for s in systems},
                                    "accuracy", "Benchmark accuracy")),
        ))
    return out


def _judge_text(cfg: Config, stats: dict, judged: bool) -> str:
    if not judged:
        return ("**No judge was used** (judge.engine: none): systems are compared only by judge-free metrics, "
                "their overlap with the dataset's reference answers (token F1, ROUGE-L, reference recall), "
                "refusal accuracy and answer length.")
    saw = stats.get("judge_saw", {})
    shown = [x for x, on in (("the reference answer", saw.get("reference")),
                             (f"the corpus evidence ({saw.get('evidence', 0)} questions)", saw.get("evidence"))) if on]
    return (f"Judge: {_engine_text(cfg.judge.model_dump() if cfg.judge else None)}; it saw {' and '.join(shown) or 'the answers only'}; "
            f"criteria {', '.join(stats.get('criteria', []))}; each pair judged in both orders, a win counts only "
            f"when both orders agree (else a tie); win rate = (wins + ties/2) / n; 95% intervals from "
            f"{cfg.evaluate.bootstrap} bootstrap resamples of the questions. Verdicts that failed (invalid JSON, "
            f"transport errors; left out of the win rates): {stats.get('judge_errors', 0)} pair judgments.")


def _headline(cfg: Config, engines: dict[str, dict], answers: list[dict], results: list[dict], stats: dict,
              judged: bool, pairs: list[tuple[str, str]]) -> Section:
    """Every system, failed ones included: answers, failures and their commonest reason, the main
    judge-free numbers and, with a judge, the anchor's win rate against it."""
    total = Counter(r["system"] for r in answers)
    order = [*cfg.evaluate.systems, *cfg.evaluate.answer_files]  # as configured (the stats' dict comes back sorted)
    systems = [s for s in dict.fromkeys([*order, *engines, *(r["system"] for r in answers)]) if s in engines or s in total]
    failed = {s: Counter(r["error"] for r in answers if r["system"] == s and r["error"]) for s in systems}
    cell = {(r["metric"], r["system_a"], r["kind"]): r for r in results if r["system_b"] is None}
    criteria = stats.get("criteria", [])
    wins = {(r["system_a"], r["system_b"]): r for r in results
            if r["metric"] == "win_rate" and r["kind"] == "all" and criteria and r["criterion"] == criteria[0]}
    anchor = cfg.evaluate.anchor
    text = [] if judged else [_judge_text(cfg, stats, judged)]
    for s in systems:
        if failed[s]:
            n = sum(failed[s].values())
            reason, _ = failed[s].most_common(1)[0]
            gone = "; it is left out of every comparison" if n == total[s] else ""
            text.append(f"**{s} failed on {n} of {total[s]} questions** (most often: {reason[:160]}){gone}.")
    headers = ["system", "answered", "failed", "token F1", "ROUGE-L", "refusal acc."]
    if judged and criteria:
        headers.append(f"{anchor} win rate vs it ({criteria[0]}, n)")
    answered = defaultdict(set)
    for r in answers:
        if r["error"] is None:
            answered[r["system"]].add(r["question_id"])
    rows = []
    for s in systems:
        n_failed = sum(failed[s].values())
        row = [s, str(total[s] - n_failed), str(n_failed)] + [
            _fmt_row(cell.get((m, s, "all"))) for m in ("token_f1", "rouge_l", "refusal_accuracy")]
        if judged and criteria:
            row.append(_win_cell(anchor, s, wins, pairs, answered))
        rows.append(row)
    text.append("Answers scored against the dataset's reference answers, over all question kinds, with 95% "
                "intervals; refusal accuracy = unanswerable questions refused and the others answered.")
    return Section("Headline", text, headers, rows)


def _fmt_row(r: dict | None) -> str:
    return fmt(r["value"], r["ci_low"], r["ci_high"]) if r else "n/a"


def _win_cell(anchor: str, system: str, wins: dict, pairs: list[tuple[str, str]], answered: dict) -> str:
    if system == anchor:
        return "(anchor)"
    if (anchor, system) not in pairs:
        return "not compared"
    r = wins.get((anchor, system))
    if r is None:
        both = len(answered[anchor] & answered[system])
        return (f"no valid verdict on the {both} questions both answered (judge errors, see Setup)" if both
                else "not judged: no question with answers from both")
    return f"{_fmt_row(r)} (n={r['n']})"


def _context_sections(stats: dict) -> list[Section]:
    """How each context-using system's prompts were built and cut to the answering model's window."""
    out = []
    lc = stats.get("long_context")
    if lc and "budget_tokens" in lc:  # absent when not even the bare prompt fits: every answer failed, said above
        omitted = lc["blocks_total"] - lc["blocks_full"] - lc["blocks_partial"]
        out.append(Section("Long-context packing", [
            f"The corpus was packed in date order into {lc['budget_tokens']} tokens (counted with "
            f"{lc['counted_with']}, the whole prompt measured against the window): {lc['tokens_kept']} of "
            f"{lc['tokens_total']} tokens kept, **{100 * lc['cut_fraction']:.1f}% cut**; {lc['blocks_full']} of "
            f"{lc['blocks_total']} documents whole, {lc['blocks_partial']} truncated, {omitted} left out (the latest ones)."]))
    rag = stats.get("naive_rag")
    if rag:
        def share(x):
            return "n/a" if x is None else f"{x:.3f}"
        how = (f"{rag['retriever']} retrieved {rag['candidates']} candidates, reranked by cosine similarity of the "
               f"MiniLM embedder, top {rag['top_k']} kept" if rag.get("reranked")
               else f"{rag['retriever']}, top {rag['top_k']} chunks")
        first = (f" (first stage: {share(rag['first_stage_recall'])})" if rag.get("reranked") else "")
        out.append(Section("Naive RAG", [f"{how}; the question's source chunk is among the kept chunks for "
                                         f"{share(rag['source_chunk_recall'])} of the questions that have one{first}; "
                                         f"{rag.get('prompts_cut', 0)} prompts cut to fit the window."]))
    gl = stats.get("graph_local")
    if gl:
        out.append(Section("GraphRAG local search", [
            f"Up to {gl['top_entities']} entities per question (named in {gl['questions_naming_an_entity']} "
            f"questions, the rest by embedding similarity), their relationships and text units, packed into "
            f"{gl['context_tokens']} tokens; {gl.get('prompts_cut', 0)} prompts cut to fit."]))
    return out


def _engine_text(e: dict | None) -> str:
    if not e:
        return "none"
    if e.get("engine") == "file":
        return f"answer file {e['path']}"
    text = f"{e['engine']}:{e.get('model')}"
    return text + (f" + adapter {e['adapter']}" if e.get("adapter") else "")


def _win_sections(results: list[dict], order: list[str]) -> list[Section]:
    wins = [r for r in results if r["metric"] == "win_rate"]
    if not wins:
        return [Section("Pairwise judge", ["The judge returned no valid verdicts."])]
    agree = {(r["system_a"], r["system_b"], r["criterion"], r["kind"]): r["value"]
             for r in results if r["metric"] == "judge_agreement"}
    pairs = list(dict.fromkeys((r["system_a"], r["system_b"]) for r in wins))
    judged = {r["criterion"] for r in wins}
    criteria = [c for c in order if c in judged] + sorted(judged - set(order))
    kinds = ["all"] + sorted({r["kind"] for r in wins} - {"all"})
    by = {(r["system_a"], r["system_b"], r["criterion"], r["kind"]): r for r in wins}
    series = {f"{a} vs {b}": [(by[(a, b, c, "all")]["value"], by[(a, b, c, "all")]["ci_low"], by[(a, b, c, "all")]["ci_high"])
                              if (a, b, c, "all") in by else (float("nan"),) * 3 for c in criteria] for a, b in pairs}
    rate = {k: r["value"] for k, r in by.items()}
    rows = [[f"{r['system_a']} vs {r['system_b']}", r["criterion"], r["kind"], str(r["n"]), str(r["wins_a"]),
             str(r["wins_b"]), str(r["ties"]), fmt(r["value"], r["ci_low"], r["ci_high"]),
             fmt(agree.get((r["system_a"], r["system_b"], r["criterion"], r["kind"])))]
            for r in sorted(wins, key=lambda r: (pairs.index((r["system_a"], r["system_b"])),
                                                  criteria.index(r["criterion"]), kinds.index(r["kind"])))]
    anchor_rows = [[f"{a} vs {b}"] + [fmt(by[(a, b, criteria[0], k)]["value"]) if (a, b, criteria[0], k) in by else "n/a"
                                      for k in kinds] for a, b in pairs]
    return [
        Section("Win rate by question kind",
                [f"Win rate of the first system on **{criteria[0]}**, by question kind (0.5 = even; > 0.5 = the first "
                 "system is preferred in both answer orders more often than the second). The method's claim: the "
                 "student beats naive_rag on global questions and long_context on local ones."],
                ["pair", *kinds], anchor_rows),
        Section("Win rates by criterion",
                ["Win rate of the first system of each pair over all question kinds (0.5 = even), with 95% intervals."],
                figure=("win_rates_by_criterion.png", _bars(criteria, series, "win rate", "Win rate by criterion", 0.5))),
        Section("Win rates by criterion and kind",
                ["Cells of the heat map are the first system's win rate (blue > 0.5 > red). "
                 "`agree` is the share of verdicts on which both answer orders agreed; low values mean the judge "
                 "follows position, not content."],
                ["pair", "criterion", "kind", "n", "wins A", "wins B", "ties", "win rate A [95% CI]", "agree"], rows,
                ("win_rates_by_kind.png", _heatmaps(pairs, criteria, kinds, rate))),
    ]


def _metric_sections(answers: list[dict], results: list[dict]) -> list[Section]:
    names = ("token_f1", "rouge_l", "reference_recall", "answer_tokens", "refusal_accuracy", "false_refusal_rate")
    cells = {(r["system_a"], r["kind"], r["metric"]): r for r in results if r["metric"] in names}
    keys = sorted({(s, k) for s, k, _ in cells}, key=lambda x: (x[0], x[1] != "all", x[1]))

    def triple(s: str, k: str, m: str) -> tuple:
        c = cells.get((s, k, m))
        return (c["value"], c["ci_low"], c["ci_high"]) if c else (float("nan"),) * 3

    rows = [[s, k, str(cells[(s, k, "token_f1")]["n"])] + [fmt(*triple(s, k, m)) for m in names] for s, k in keys]
    systems = sorted({s for s, _ in keys})
    series = {m: [triple(s, "all", m) for s in systems] for m in ("token_f1", "rouge_l")}
    if not systems:
        return [Section("Judge-free metrics", ["No system produced an answer."])]
    return [
        Section("Judge-free metrics",
                ["Token F1, ROUGE-L and reference recall (share of the reference's content words the answer has) "
                 "against the dataset's reference answer (reasoning removed), answer length in words, refusal "
                 "accuracy (unanswerable questions refused, the others answered) and false refusals; 95% intervals. "
                 "Failed answers are left out (counted in the headline)."],
                ["system", "group", "n", "token F1", "ROUGE-L", "ref. recall", "words", "refusal acc.",
                 "false refusals"], rows,
                ("reference_overlap.png", _bars(systems, series, "score", "Overlap with the reference answer"))),
        Section("Answer lengths", [], figure=("answer_lengths.png", _lengths(answers))),
    ]


# ---- rendering ------------------------------------------------------------------------
def render_md(title: str, secs: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for s in secs:
        lines += [f"## {s.heading}", ""] + [t + "\n" for t in s.text]
        if s.headers:
            lines += ["| " + " | ".join(s.headers) + " |", "|" + "---|" * len(s.headers)]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in s.rows] + [""]
        if s.figure:
            lines += [f"![{s.heading}](plots/{s.figure[0]})", ""]
    return "\n".join(lines)


def render_html(title: str, secs: list[Section]) -> str:
    import re

    def inline(text: str) -> str:
        t = html.escape(text)
        t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", t)

    body = [f"<h1>{html.escape(title)}</h1>"]
    for s in secs:
        body.append(f"<h2>{html.escape(s.heading)}</h2>")
        body += [f"<p>{inline(t)}</p>" for t in s.text]
        if s.headers:
            head = "".join(f"<th>{html.escape(h)}</th>" for h in s.headers)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in s.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        if s.figure:
            data = base64.b64encode(s.figure[1]).decode()
            body.append(f'<img alt="{html.escape(s.heading)}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px}"
             "th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def write_report(run: Run, cfg: Config, secs: list[Section], results: list[dict]) -> None:
    """results.parquet, config.yaml, report.md (+ plots/) and report.html into the eval folder."""
    title = "ragtune evaluation"
    table = schemas.validate("eval_results", pa.Table.from_pylist(results, schema=schemas.schema_of("eval_results")))
    run.fs.makedirs(run.uri("plots"), exist_ok=True)  # and the eval folder: the first file written makes it
    with run.fs.open(run.uri("results.parquet"), "wb") as f:
        pq.write_table(table, f, **PARQUET_ARGS)
    for s in secs:
        if s.figure:
            with run.fs.open(run.uri("plots", s.figure[0]), "wb") as f:
                f.write(s.figure[1])
    texts = {"config.yaml": yaml.safe_dump(cfg.public_dict(), sort_keys=False),
             "report.md": render_md(title, secs), "report.html": render_html(title, secs)}
    for name, text in texts.items():
        with run.fs.open(run.uri(name), "w") as f:
            f.write(text)
