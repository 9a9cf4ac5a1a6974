"""Benchmark statistics and their report: JSON, a markdown table and PNG plots.

The raw runs come from transduce/commands/bench.py; this module only summarizes and renders.
Every summary number is a median over the timed runs, with the min-max range for tokens/s.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

logger = logging.getLogger(__name__)

JSON_FILE, MARKDOWN_FILE = "bench.json", "bench.md"
THROUGHPUT_PLOT, LATENCY_PLOT = "tokens_per_s.png", "step_latency.png"


def decoder_macs_per_token(config: dict, past_len: float, src_len: float) -> float:
    """Multiply-adds of one decoder step for one row (one generated token).

    Weights: per layer four self-attention and two cross-attention D x D projections (the
    cross keys/values come from the encoder, once) and the feed-forward pair, plus the output
    layer. Attention: scores and weighted sums over past_len + 1 and src_len positions.
    """
    D, F, V, n = (
        config["d_model"],
        config["d_ff"],
        config["tgt_vocab_size"],
        config["n_decoder_layers"],
    )
    weights = n * (6 * D * D + 2 * D * F) + D * V
    attention = n * 2 * D * (past_len + 1 + src_len)
    return weights + attention


def encoder_macs_per_token(config: dict, src_len: float) -> float:
    """Multiply-adds per source token: the encoder layers and every decoder layer's cross K/V."""
    D, F = config["d_model"], config["d_ff"]
    layers = config["n_encoder_layers"] * (4 * D * D + 2 * D * F + 2 * D * src_len)
    return layers + config["n_decoder_layers"] * 2 * D * D


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(report: dict) -> list[dict]:
    """One row per (engine, workload) from report["runs"]; ratios against the first peer."""
    rows = []
    for workload in report["workloads"]:
        for engine in report["engine_order"]:
            runs = [
                r
                for r in report["runs"]
                if r["engine"] == engine and r["workload"] == workload["name"] and r.get("ok")
            ]
            if not runs:
                continue
            rows.append(_summary_row(report, engine, workload, runs))
    _add_ratios(rows, report)
    return rows


def _summary_row(report: dict, engine: str, workload: dict, runs: list[dict]) -> dict:
    rates = [r["generated"] / r["seconds"] for r in runs]
    row = {
        "engine": engine,
        "workload": workload["name"],
        "batch": workload["batch"],
        "beam": workload["beam"],
        "runs": len(runs),
        "tokens_per_s": statistics.median(rates),
        "tokens_per_s_min": min(rates),
        "tokens_per_s_max": max(rates),
        "seconds": statistics.median(r["seconds"] for r in runs),
        "cpu_cores": statistics.median(r["cpu_seconds"] / r["seconds"] for r in runs),
        "first_token_s": _median([r.get("one_token_seconds") for r in runs]),
        # per request: a demo run serves many batches one after another
        "encode_s": _median(
            [r["encode_seconds"] / r.get("requests", 1) for r in runs if r.get("encode_seconds")]
        ),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
    }
    # per-step latency: the engine's own step times, or (T(M) - T(1)) / (M - 1) per run
    steps = [s for r in runs for s in (r.get("step_seconds") or [])]
    if steps:
        row["step_s"] = statistics.median(steps)
    elif workload["new_tokens"] > 1 and all(r.get("one_token_seconds") for r in runs):
        row["step_s"] = statistics.median(
            (r["seconds"] - r["one_token_seconds"]) / (workload["new_tokens"] - 1) for r in runs
        )
    graph = [r for r in runs if r.get("graph_seconds") is not None and r.get("step_seconds")]
    if graph:
        row["outside_graph"] = statistics.median(
            1 - r["graph_seconds"] / sum(r["step_seconds"]) for r in graph
        )
    floor = report.get("gemm", {}).get("floor_step_seconds", {}).get(str(workload["rows"]))
    if floor and row.get("step_s"):
        row["floor_fraction"] = floor / row["step_s"]
    if "accuracy" in runs[0]:
        row["accuracy"] = runs[0]["accuracy"]
    return row


def _add_ratios(rows: list[dict], report: dict) -> None:
    reference = report.get("reference_engine")
    hf = "transformers"
    by_key = {(r["engine"], r["workload"]): r for r in rows}
    for row in rows:
        for name, key in ((reference, "vs_reference"), (hf, "vs_transformers")):
            other = by_key.get((name, row["workload"])) if name else None
            if other:
                row[key] = row["tokens_per_s"] / other["tokens_per_s"]


def _fmt(value, pattern: str, scale: float = 1.0) -> str:
    return "–" if value is None else pattern % (value * scale)


def markdown(report: dict) -> str:
    """The report as markdown: context lines, then one table row per (workload, engine)."""
    settings, model = report["settings"], report["model"]
    lines = [
        f"# transduce bench ({settings['mode']})",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores "
        f"({report['machine']['isa']}); {settings['threads']} threads per engine; load average "
        f"{report['machine']['load_before']} before, {report['machine']['load_after']} after.",
        f"Model: {model['description']}; {model['parameters']:,} parameters; "
        f"{model['decoder_macs_per_token'] / 1e6:.1f} M multiply-adds per generated token "
        f"(decoder), {model['encoder_macs_per_token'] / 1e6:.1f} M per source token (encoder).",
    ]
    gemm = report.get("gemm")
    if gemm:
        floors = ", ".join(
            f"{rows} rows {1e3 * s:.2f} ms" for rows, s in gemm["floor_step_seconds"].items()
        )
        lines.append(
            f"Matmul rate here: torch {gemm['peak_gflops']['torch']:.0f} GFLOP/s, numpy "
            f"{gemm['peak_gflops']['numpy']:.0f} GFLOP/s (1024³ fp32); weight-matmul floor of "
            f"one decoder step: {floors}."
        )
    lines += [
        f"Workload: {settings['workload_text']}. {settings['runs']} timed runs after "
        f"{settings['warmup']} warm-up, engines interleaved run by run, each in its own process.",
        "",
    ]
    for name, engine in report["engines"].items():
        if not engine.get("available"):
            lines.append(f"- {name}: not run ({engine.get('note')})")
        elif engine.get("verify"):
            lines.append(f"- {name}: {engine['verify']}")
    lines.append("")
    reference = report.get("reference_engine") or "first peer"
    quality = any("accuracy" in r for r in report["summary"])
    header = (
        "| workload | engine | tokens/s (median, min–max) | × "
        + reference
        + " | × HF | first token ms | step ms | encoder ms | CPU cores | outside graph | "
        "% of matmul floor | peak RSS MiB | load s |" + (" exact match |" if quality else "")
    )
    lines += [header, _separator(header)]
    for row in report["summary"]:
        engine = report["engines"][row["engine"]]
        cells = [
            row["workload"],
            row["engine"],
            _rate_cell(row),
            _fmt(row.get("vs_reference"), "%.2f"),
            _fmt(row.get("vs_transformers"), "%.2f"),
            _fmt(row.get("first_token_s"), "%.1f", 1e3),
            _fmt(row.get("step_s"), "%.2f", 1e3),
            _fmt(row.get("encode_s"), "%.1f", 1e3),
            f"{row['cpu_cores']:.2f}",
            _fmt(row.get("outside_graph"), "%.1f %%", 100),
            _fmt(row.get("floor_fraction"), "%.0f %%", 100),
            f"{row['peak_rss_mib']:.0f}",
            _fmt(engine.get("load_seconds"), "%.2f"),
        ]
        if quality:
            cells.append(_fmt(row.get("accuracy"), "%.2f %%", 100))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _legend()]
    return "\n".join(lines) + "\n"


def _rate_cell(row: dict) -> str:
    low, high = row["tokens_per_s_min"], row["tokens_per_s_max"]
    return f"{row['tokens_per_s']:.1f} ({low:.1f}–{high:.1f})"


def _separator(header: str) -> str:
    return "|" + "---|" * (header.count("|") - 1)


def _legend() -> str:
    return (
        "first token: a separate 1-token request (encoder + one step), same batch. step: the "
        "engine's own per-step times where it reports them (transduce backends), else "
        "(T(M) − T(1)) / (M − 1). outside graph: share of step time spent outside the decoder "
        "graph call (Python loop, slot writes). % of matmul floor: the time of the step's weight "
        "products alone in torch or numpy over the engine's step time (above 100 %: faster than "
        "those bare products, whose one-row matrix-vector kernels are not the best possible). "
        "CPU cores: process CPU time / wall time."
    )


def plot(report: dict, directory: Path) -> list[Path]:
    """tokens/s vs batch per engine (greedy), and the per-step latency at the first workload."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed; no plots (pip install -e '.[bench]')")
        return []
    written = []
    greedy = [r for r in report["summary"] if r["beam"] == 1]
    figure, axis = plt.subplots(figsize=(6.4, 4.0), dpi=90)
    for engine in report["engine_order"]:
        points = sorted((r["batch"], r["tokens_per_s"]) for r in greedy if r["engine"] == engine)
        if points:
            # transduce's backends solid, the peers dashed
            style = "--" if engine.startswith(("ctranslate2", "transformers")) else "-"
            axis.plot(*zip(*points, strict=True), style, marker="o", label=engine)
    axis.set(xlabel="batch (greedy)", ylabel="generated tokens/s", yscale="log", xscale="log")
    batches = sorted({r["batch"] for r in greedy})
    axis.set_xticks(batches, [str(b) for b in batches])
    axis.minorticks_off()
    axis.set_title(report["settings"]["plot_title"], fontsize=9)
    axis.legend(fontsize=7)
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    written.append(directory / THROUGHPUT_PLOT)
    figure.savefig(written[-1])
    plt.close(figure)

    first = report["workloads"][0]["name"]
    samples, labels = [], []
    for engine in report["engine_order"]:
        runs = [
            r
            for r in report["runs"]
            if r["engine"] == engine and r["workload"] == first and r.get("ok")
        ]
        steps = [1e3 * s for r in runs for s in (r.get("step_seconds") or [])]
        if not steps and runs and report["workloads"][0]["new_tokens"] > 1:
            m = report["workloads"][0]["new_tokens"]
            steps = [1e3 * (r["seconds"] - r["one_token_seconds"]) / (m - 1) for r in runs]
        if steps:
            samples.append(steps)
            labels.append(engine)
    if samples:
        figure, axis = plt.subplots(figsize=(6.4, 4.0), dpi=90)
        axis.boxplot(samples, showfliers=False)
        axis.set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right", fontsize=7)
        title = f"per-step latency, {first} (engines without step times: one value per run)"
        axis.set(ylabel="ms per decoder step")
        axis.set_title(title, fontsize=9)
        axis.grid(True, axis="y", alpha=0.3)
        figure.tight_layout()
        written.append(directory / LATENCY_PLOT)
        figure.savefig(written[-1])
        plt.close(figure)
    return written


def write_report(report: dict, directory: Path, *, plots: bool = True) -> list[Path]:
    """Write bench.json, bench.md and the plots into `directory`; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    report["summary"] = summarize(report)
    paths = [directory / JSON_FILE, directory / MARKDOWN_FILE]
    paths[0].write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    paths[1].write_text(markdown(report))
    if plots:
        paths += plot(report, directory)
    return paths
