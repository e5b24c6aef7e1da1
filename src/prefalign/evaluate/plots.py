"""The report's figures: bars with 95% error bars per metric and model, win rates, and the training curves of runs.

Figures use matplotlib's object API on the Agg canvas (no pyplot state, no display) and are written as PNG files.
Each model keeps one colour in every figure and in the HTML page (`model_colours`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .results import EvalReport
from .table import IFEVAL_METRICS, Row

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Slate for the first (base) model, then saturated hues that stay distinct for colour-blind readers.
PALETTE = ("#64748b", "#2563eb", "#ea580c", "#16a34a", "#9333ea", "#0891b2", "#be123c", "#a16207")
_DPI = 144


def model_colours(labels: list[str]) -> dict[str, str]:
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _style(ax: Axes) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, axis="y", alpha=0.25)
    ax.set_axisbelow(True)


def _bars(
    ax: Axes,
    row: Row,
    labels: list[str],
    colours: dict[str, str],
    offset: float = 0.0,
    width: float = 0.8,
    x0: float = 0.0,
) -> None:
    for i, label in enumerate(labels):
        cell = row.cells.get(label)
        if cell is None:
            continue
        error = [[max(cell.value - cell.low, 0.0)], [max(cell.high - cell.value, 0.0)]]
        ax.bar(
            x0 + i * width + offset,
            cell.value,
            width=width * 0.9,
            color=colours[label],
            yerr=error,
            capsize=3,
            error_kw={"elinewidth": 1.0, "ecolor": "#1f2937"},
        )


def ifeval_figure(report: EvalReport, path: Path) -> Path | None:
    """Grouped bars: the IFEval accuracies of every model."""
    keys = {m.key for m in IFEVAL_METRICS}
    rows = [row for row in report.rows if row.metric.key in keys]
    if not rows:
        return None
    labels, colours = report.labels, model_colours(report.labels)
    figure = _figure(6.4, 3.8)
    ax = figure.add_subplot()
    width = 0.8 / len(labels)
    for group, row in enumerate(rows):
        _bars(ax, row, labels, colours, offset=-0.4 + width / 2, width=width, x0=group)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r.metric.name.replace("IFEval ", "").replace(" accuracy", "\naccuracy") for r in rows])
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction")
    ax.set_title("Instruction following (IFEval), 95% intervals", loc="left", fontsize=11)
    handles = [ax.bar([0], [0], color=colours[label], width=0) for label in labels]
    ax.legend(handles, labels, frameon=False, ncols=len(labels), loc="upper right")
    _style(ax)
    figure.savefig(path, dpi=_DPI)
    return path


def metrics_figure(report: EvalReport, path: Path) -> Path | None:
    """Small multiples: every other per-model metric (lengths, refusals, repetition, judge scores, KL, ...)."""
    skip = {m.key for m in IFEVAL_METRICS}
    rows = [r for r in report.rows if r.metric.key not in skip and not r.metric.key.startswith("win_rate")]
    if not rows:
        return None
    labels, colours = report.labels, model_colours(report.labels)
    columns = min(3, len(rows))
    lines = -(-len(rows) // columns)
    figure = _figure(3.3 * columns, 2.7 * lines)
    for index, row in enumerate(rows):
        ax = figure.add_subplot(lines, columns, index + 1)
        _bars(ax, row, labels, colours)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_title(row.metric.name, fontsize=9, loc="left")
        ax.tick_params(axis="y", labelsize=8)
        _style(ax)
    figure.savefig(path, dpi=_DPI)
    return path


def win_rate_figure(report: EvalReport, path: Path) -> Path | None:
    """Horizontal bars: each model's win rate over its baseline per judge; LC win rate as a hollow marker."""
    results = [r for r in report.pairwise if r.win_rate is not None]
    if not results:
        return None
    colours = model_colours(report.labels)
    figure = _figure(6.4, max(3.8, 0.55 * len(results) + 1.3))
    ax = figure.add_subplot()
    for y, result in enumerate(results):
        rate = result.win_rate
        assert rate is not None
        ax.barh(
            y,
            rate.value,
            height=0.6,
            color=colours[result.model],
            xerr=[[rate.value - rate.low], [rate.high - rate.value]],
            capsize=3,
            error_kw={"elinewidth": 1.0, "ecolor": "#1f2937"},
        )
        lc = result.lc_win_rate
        if lc is not None:
            ax.errorbar(
                lc.value,
                y + 0.33,
                xerr=[[lc.value - lc.low], [lc.high - lc.value]],
                fmt="o",
                markerfacecolor="white",
                color="#1f2937",
                markersize=5,
                capsize=2,
                linewidth=0.8,
            )
    ax.axvline(0.5, color="#9ca3af", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(results)))
    ax.set_yticklabels([f"{r.model} vs {r.baseline}\n({r.judge})" for r in results], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate (ties count half); ○ length-controlled")
    ax.set_title("Pairwise win rate over the baseline, 95% intervals", loc="left", fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, axis="x", alpha=0.25)
    figure.savefig(path, dpi=_DPI)
    return path


def report_figures(report: EvalReport, directory: Path) -> list[tuple[str, Path]]:
    """Write the report's figures into `directory`; (title, path) of each one drawn."""
    directory.mkdir(parents=True, exist_ok=True)
    drawn = [
        ("Instruction following", ifeval_figure(report, directory / "ifeval.png")),
        ("Win rates", win_rate_figure(report, directory / "win_rates.png")),
        ("Other metrics", metrics_figure(report, directory / "metrics.png")),
    ]
    return [(title, path) for title, path in drawn if path is not None]


def training_figures(runs: dict[str, str], directory: Path) -> dict[str, list[Path]]:
    """Each run's training curves (train vs validation, from its metrics.jsonl), drawn by the trainer's own plotter."""
    from ..train.plots import make_plots

    return {label: make_plots(Path(run) / "metrics.jsonl", directory / label) for label, run in runs.items()}
