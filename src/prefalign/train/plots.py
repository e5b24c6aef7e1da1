"""End-of-run plots from `metrics.jsonl`: one PNG per metric family, train and validation on the same axes.

The families below are the curves that say whether preference training works (loss, reward gap, accuracy, KL, ...).
Any other metric in the file gets a plot of its own, so a new objective's metrics are plotted without editing this
module. Families the run did not log are skipped.

The same metric name can mean different things per objective: DPO's "rewards/chosen" is its implicit reward
beta * log(pi / pi_ref), a reward model's is the scalar its head outputs. The objective (from the caller, or from the
run.json beside metrics.jsonl) picks the labels. Each PNG also carries its title and axis labels as text metadata.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .metrics import read_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Family:
    name: str  # file stem
    title: str
    ylabel: str
    keys: tuple[str, ...]  # metrics drawn together; line style tells them apart, colour tells the split
    ylim: tuple[float, float] | None = None
    zero_line: bool = False  # draw y = 0 where crossing it means something (a reward gap, rewards)


FAMILIES = (
    Family("loss", "Training objective", "loss", ("loss",)),
    Family("reward_gap", "Reward gap (chosen − rejected)", "rewards/margins", ("rewards/margins",), zero_line=True),
    Family(
        "accuracy",
        "Preference accuracy (chosen reward > rejected)",
        "rewards/accuracies",
        ("rewards/accuracies",),
        ylim=(-0.02, 1.02),
    ),
    Family("kl", "KL(policy ‖ reference), per completion token", "nats / token", ("kl",)),
    Family("rewards", "Rewards", "reward", ("rewards/chosen", "rewards/rejected"), zero_line=True),
    Family("logps", "Completion log-probabilities", "log p (sum over tokens)", ("logps/chosen", "logps/rejected")),
    Family("logratio", "Sequence log-ratio policy / reference", "nats / sequence", ("logratio",), zero_line=True),
)

# What "rewards" are, per objective (run.json's "command"): (title, y label) of the rewards family.
REWARD_LABELS = {
    "dpo": ("Implicit rewards (DPO)", "β · log(π / π_ref)"),
    "rm": ("Reward-head outputs", "r(x, y): reward head at the last token"),
}

# Record fields that are positions in the run, not metrics.
_NOT_METRICS = {"step", "split", "epoch"}
_LINE_STYLES = ("-", "--", ":", "-.")
_SPLIT_COLOURS = {"train": "tab:blue", "eval": "tab:orange"}
_SPLIT_LABELS = {"train": "train", "eval": "validation"}


def make_plots(metrics_path: Path, out_dir: Path, objective: str | None = None) -> list[Path]:
    """Write `out_dir/<family>.png` for every family with data in `metrics_path`; return the paths written.

    `objective` ("dpo", "rm", ...) names what the run optimised, for the labels; by default it is read from the
    run.json next to `metrics_path`, and without one the labels stay generic.
    """
    metrics_path = Path(metrics_path)
    series = _load_series(metrics_path)
    known = families_for(objective if objective is not None else run_objective(metrics_path.parent))
    families = [family for family in known if any(key in series for key in family.keys)]
    claimed = {key for family in known for key in family.keys}
    families += [Family(key.replace("/", "_"), key, key, (key,)) for key in sorted(series) if key not in claimed]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [_plot(family, series, out_dir / f"{family.name}.png") for family in families]


def families_for(objective: str | None) -> tuple[Family, ...]:
    """FAMILIES, labelled for `objective`: the rewards family says what a reward is for it."""
    if objective not in REWARD_LABELS:
        return FAMILIES
    title, ylabel = REWARD_LABELS[objective]
    return tuple(replace(f, title=title, ylabel=ylabel) if f.name == "rewards" else f for f in FAMILIES)


def run_objective(run_dir: Path) -> str | None:
    """The objective of the training run in `run_dir` (its run.json's "command"), or None when that is unknown."""
    try:
        command = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8")).get("command")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return command if isinstance(command, str) else None


def _load_series(path: Path) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """metric -> split -> (steps, values), skipping nulls (non-finite values) and non-numeric fields."""
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = defaultdict(dict)
    for record in read_metrics(path):
        split = str(record.get("split", "train"))
        for key, value in record.items():
            if key in _NOT_METRICS or not _is_number(value):
                continue
            steps, values = series[key].setdefault(split, ([], []))
            steps.append(record["step"])
            values.append(float(value))
    return series


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plot(family: Family, series: dict[str, dict[str, tuple[list[int], list[float]]]], path: Path) -> Path:
    fig = draw_family(family, series)
    # PNG text chunks: what the curves are stays with the file, readable without looking at the picture.
    fig.savefig(path, dpi=110, metadata={"Title": family.title, "Description": f"y: {family.ylabel}"})
    return path


def draw_family(family: Family, series: dict[str, dict[str, tuple[list[int], list[float]]]]) -> Figure:
    """The figure of one family: each of its metrics per split (metric -> split -> (steps, values)) against steps."""
    # The object-oriented API with the Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    several_keys = sum(key in series for key in family.keys) > 1
    splits = sorted({split for key in family.keys for split in series.get(key, {})}, key=_split_order)
    fallback_colours = iter(["tab:green", "tab:red", "tab:purple", "tab:brown", "tab:gray"])
    colours = {split: _SPLIT_COLOURS.get(split) or next(fallback_colours, "black") for split in splits}
    for key_index, key in enumerate(family.keys):
        for split in splits:
            if split not in series.get(key, {}):
                continue
            steps, values = series[key][split]
            label = _SPLIT_LABELS.get(split, split)
            if several_keys:
                label = f"{key.split('/')[-1]}, {label}"
            # Training metrics are logged often and are noisy: a thin line. Evaluations are sparse: points joined.
            sparse = split != "train" or len(steps) < 20
            ax.plot(
                steps,
                values,
                label=label,
                color=colours[split],
                linestyle=_LINE_STYLES[key_index % len(_LINE_STYLES)],
                linewidth=1.8 if sparse else 1.1,
                marker="o" if sparse else None,
                markersize=4,
            )
    if family.zero_line:
        ax.axhline(0.0, color="0.6", linewidth=0.8, zorder=0)
    if family.ylim is not None:
        ax.set_ylim(*family.ylim)
    ax.set_title(family.title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(family.ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", frameon=False)
    return fig


def _split_order(split: str) -> tuple[int, str]:
    return (0 if split == "train" else 1 if split == "eval" else 2, split)
