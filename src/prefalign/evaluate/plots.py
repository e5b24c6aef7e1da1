"""The report's figures: bars with 95% error bars per metric and model, win rates, and the training curves of runs.

Figures use matplotlib's object API on the Agg canvas (no pyplot state, no display) and are written as PNG files.
Each model keeps one colour in every figure and in the HTML page (`model_colours`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .results import EvalReport
from .table import IFEVAL_METRICS, Row, clip_label, judge_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.backend_bases import RendererBase
    from matplotlib.figure import Figure
    from matplotlib.text import Text

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


def varies(row: Row) -> bool:
    """False when every model with a value has the same one (refusals 0 everywhere): a plot would show nothing."""
    values = [cell.value for cell in row.cells.values() if cell is not None]
    return len(values) < 2 or max(values) - min(values) > 1e-12 * max(1.0, *map(abs, values))


def constant_rows(report: EvalReport) -> list[Row]:
    """The table's rows that the figures leave out, since they are the same for every model."""
    return [row for row in report.rows if not row.metric.key.startswith("win_rate") and not varies(row)]


def _fit(text: Text, width: float, renderer: RendererBase, *, wrap: bool) -> None:
    """Make `text` at most `width` pixels wide: wrapped at spaces when `wrap`, and any line still too wide cut in
    the middle (a long path has no space to wrap at)."""

    def fits(candidate: str) -> bool:
        text.set_text(candidate)
        return text.get_window_extent(renderer).width <= width

    lines: list[str] = []
    for word in text.get_text().split(" ") if wrap else [text.get_text()]:
        if lines and fits(f"{lines[-1]} {word}"):
            lines[-1] = f"{lines[-1]} {word}"
            continue
        size = len(word)
        while size > 1 and not fits(clip_label(word, size)):
            size -= 1
        lines.append(clip_label(word, size))
    text.set_text("\n".join(lines))


def _fit_texts(figure: Figure) -> None:
    """Wrap each axes' title to the axes' width and cut its x tick labels to their share of it, once the layout has
    placed the axes: a long judge or model name then stays above its own plot."""
    from matplotlib.text import Text

    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]  # the Agg canvas has one; _figure uses it
    for ax in figure.axes:
        box = ax.get_window_extent(renderer)
        for title in ax.get_children():  # its titles (left, centre, right) and any text drawn in it
            if isinstance(title, Text) and title.get_text():
                _fit(title, box.width, renderer, wrap=True)
        ticks = [label for label in ax.get_xticklabels() if label.get_text()]
        for label in ticks:
            _fit(label, 0.95 * box.width / len(ticks), renderer, wrap=False)


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


def ifeval_figure(report: EvalReport) -> Figure | None:
    """Grouped bars: the IFEval accuracies of every model (those that differ between models)."""
    keys = {m.key for m in IFEVAL_METRICS}
    rows = [row for row in report.rows if row.metric.key in keys and varies(row)]
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
    names = [clip_label(label, 16) for label in labels]
    ax.legend(handles, names, frameon=False, ncols=min(len(labels), 4), loc="upper right", fontsize=8)
    _style(ax)
    _fit_texts(figure)
    return figure


def metrics_figure(report: EvalReport) -> Figure | None:
    """Small multiples: every other per-model metric (lengths, refusals, repetition, judge scores, KL, ...) that
    differs between models; one the same for all of them is in the table only."""
    skip = {m.key for m in IFEVAL_METRICS}
    rows = [r for r in report.rows if r.metric.key not in skip and not r.metric.key.startswith("win_rate")]
    rows = [r for r in rows if varies(r)]
    if not rows:
        return None
    labels, colours = report.labels, model_colours(report.labels)
    columns = min(3, len(rows))
    lines = -(-len(rows) // columns)
    figure = _figure(3.3 * columns, 2.7 * lines)
    for index, row in enumerate(rows):
        ax = figure.add_subplot(lines, columns, index + 1)
        _bars(ax, row, labels, colours, width=1.0)  # one bar per tick
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_title(row.metric.name, fontsize=9, loc="left")
        ax.tick_params(axis="y", labelsize=8)
        _style(ax)
    _fit_texts(figure)
    return figure


def win_rate_figure(report: EvalReport) -> Figure | None:
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
    ax.set_yticklabels(
        [f"{clip_label(r.model, 16)} vs {clip_label(r.baseline, 16)}\n({judge_label(r.judge)})" for r in results],
        fontsize=8,
    )
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate (ties count half); ○ length-controlled")
    ax.set_title("Pairwise win rate over the baseline, 95% intervals", loc="left", fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, axis="x", alpha=0.25)
    _fit_texts(figure)
    return figure


def report_figures(report: EvalReport, directory: Path) -> list[tuple[str, Path]]:
    """Write the report's figures into `directory`; (title, path) of each one drawn."""
    directory.mkdir(parents=True, exist_ok=True)
    drawn = []
    for title, name, build in (
        ("Instruction following", "ifeval", ifeval_figure),
        ("Win rates", "win_rates", win_rate_figure),
        ("Other metrics", "metrics", metrics_figure),
    ):
        path = directory / f"{name}.png"
        path.unlink(missing_ok=True)  # a figure not drawn this time must not linger from an earlier report
        figure = build(report)
        if figure is not None:
            figure.savefig(path, dpi=_DPI)
            drawn.append((title, path))
    return drawn


def training_figures(runs: dict[str, str], directory: Path) -> dict[str, list[Path]]:
    """Each run's training curves (train vs validation, from its metrics.jsonl), drawn by the trainer's own plotter."""
    from ..train.plots import make_plots

    return {label: make_plots(Path(run) / "metrics.jsonl", directory / label) for label, run in runs.items()}
