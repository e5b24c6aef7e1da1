"""End-of-run plots: one valid PNG per metric family with data, nothing for families the run did not log."""

from __future__ import annotations

import json

import pytest

from prefalign.train.plots import draw_family, families_for, make_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_metrics(path, records) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def _dpo_records() -> list[dict]:
    records = []
    for step in range(1, 31):
        records.append(
            {
                "step": step,
                "split": "train",
                "loss": 0.69 - 0.01 * step,
                "rewards/margins": 0.02 * step,
                "rewards/chosen": 0.01 * step,
                "rewards/rejected": -0.01 * step,
                "rewards/accuracies": min(1, step / 20),
                "logps/chosen": -40 - 0.1 * step,
                "logps/rejected": -42 - 0.3 * step,
                "kl": 0.001 * step,
                "logratio": 0.05 * step,
                "grad_norm": 1.0,
                "learning_rate": 1e-4,
                "epoch": step / 30,
            }
        )
        if step % 10 == 0:
            records.append(
                {
                    "step": step,
                    "split": "eval",
                    "loss": 0.7 - 0.01 * step,
                    "rewards/margins": 0.015 * step,
                    "rewards/accuracies": 0.5 + step / 100,
                    "kl": None,
                }
            )
    return records


def test_dpo_metrics_give_one_png_per_family(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    _write_metrics(metrics, _dpo_records())
    paths = make_plots(metrics, tmp_path / "plots")
    names = [p.name for p in paths]
    assert names == [
        "loss.png",
        "reward_gap.png",
        "accuracy.png",
        "kl.png",
        "rewards.png",
        "logps.png",
        "logratio.png",
        "grad_norm.png",
        "learning_rate.png",
    ]
    for path in paths:
        assert path.parent == tmp_path / "plots"
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert path.stat().st_size > 5000  # a drawn figure, not an empty canvas
    assert "epoch.png" not in names  # a position in the run, not a metric


def test_sft_metrics_skip_the_preference_families(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    _write_metrics(
        metrics,
        [{"step": s, "split": "train", "loss": 2.0 / s, "examples_per_second": 3.0} for s in range(1, 6)]
        + [{"step": 5, "split": "eval", "loss": 0.5}],
    )
    # A torn last line (killed run) is skipped, not an error.
    with open(metrics, "a") as handle:
        handle.write('{"step": 6, "spl')
    paths = make_plots(metrics, tmp_path / "plots")
    assert [p.name for p in paths] == ["loss.png", "examples_per_second.png"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["examples_per_second.png", "loss.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in paths)


def test_no_metrics_no_plots(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("")
    assert make_plots(metrics, tmp_path / "plots") == []


def _png_text(path) -> dict[str, str]:
    from PIL import Image

    with Image.open(path) as image:
        return dict(image.text)


def _reward_model_records() -> list[dict]:
    return [
        {
            "step": step,
            "split": "train",
            "loss": 0.7 - 0.02 * step,
            "rm_loss": 0.7 - 0.02 * step,
            "rewards/chosen": 0.1 * step,
            "rewards/rejected": -0.1 * step,
            "rewards/margins": 0.2 * step,
            "rewards/accuracies": 0.5 + 0.05 * step,
            "rewards/mean": 0.0,
            "rewards/std": 0.1 * step,
        }
        for step in range(1, 9)
    ]


DPO_LABELS = ("Implicit rewards (DPO)", "β · log(π / π_ref)")
RM_LABELS = ("Reward-head outputs", "r(x, y): reward head at the last token")


@pytest.mark.parametrize(
    ("objective", "records", "labels"),
    [
        ("dpo", _dpo_records(), DPO_LABELS),
        ("rm", _reward_model_records(), RM_LABELS),
        (None, _dpo_records(), ("Rewards", "reward")),
    ],
    ids=["dpo", "rm", "unknown"],
)
def test_the_rewards_plot_says_what_the_runs_rewards_are(tmp_path, objective, records, labels):
    """The run.json beside metrics.jsonl names the objective (as the training loop writes it); without one, the
    labels claim nothing."""
    _write_metrics(tmp_path / "metrics.jsonl", records)
    if objective is not None:
        (tmp_path / "run.json").write_text(json.dumps({"command": objective, "config": {}}))
    make_plots(tmp_path / "metrics.jsonl", tmp_path / "plots")
    text = _png_text(tmp_path / "plots" / "rewards.png")
    assert (text["Title"], text["Description"]) == (labels[0], f"y: {labels[1]}")
    gap = _png_text(tmp_path / "plots" / "reward_gap.png")  # the other families keep their labels
    assert gap["Title"] == "Reward gap (chosen − rejected)"


def test_an_explicit_objective_wins_over_run_json(tmp_path):
    _write_metrics(tmp_path / "metrics.jsonl", _reward_model_records())
    (tmp_path / "run.json").write_text(json.dumps({"command": "dpo"}))
    make_plots(tmp_path / "metrics.jsonl", tmp_path / "plots", objective="rm")
    assert _png_text(tmp_path / "plots" / "rewards.png")["Title"] == RM_LABELS[0]


@pytest.mark.parametrize(("objective", "labels"), [("dpo", DPO_LABELS), ("rm", RM_LABELS)], ids=["dpo", "rm"])
def test_the_rewards_figure_axes_carry_the_objectives_labels(objective, labels):
    rewards = next(family for family in families_for(objective) if family.name == "rewards")
    series = {"rewards/chosen": {"train": ([1, 2], [0.1, 0.2])}, "rewards/rejected": {"train": ([1, 2], [0.0, -0.1])}}
    (axes,) = draw_family(rewards, series).axes
    assert (axes.get_title(), axes.get_ylabel(), axes.get_xlabel()) == (*labels, "optimizer step")
    curves = [line.get_label() for line in axes.get_lines() if not line.get_label().startswith("_")]  # not y = 0
    assert curves == ["chosen, train", "rejected, train"]


# The report's figures (evaluate/plots.py): every text stays inside its own plot, whatever the judge and model names.

LONG_JUDGE = "reward-model:/home/someone/projects/alignment/runs/2026-11-30-demo-with-a-long-name/reward/final"
LONG_LABELS = ["base", "sft-lora-rank16-lr2e-4-epochs3", "dpo-beta0.1-from-sft-lora-rank16"]


def _eval_report():
    from prefalign.evaluate.pairwise import PairwiseResult
    from prefalign.evaluate.prompt_set import EvalPrompt
    from prefalign.evaluate.results import EvalReport
    from prefalign.evaluate.stats import Estimate
    from prefalign.evaluate.table import HEURISTIC_METRICS, IFEVAL_METRICS, Metric, Row, judge_metric

    def cells(*values: float) -> dict:
        return {label: Estimate(v, v - 0.1, v + 0.1, 50, "test") for label, v in zip(LONG_LABELS, values)}

    rows = [Row(metric, cells(0.2, 0.3, 0.4 + i / 10)) for i, metric in enumerate(IFEVAL_METRICS)]
    rows += [Row(metric, cells(0.1, 0.2, 0.3)) for metric in HEURISTIC_METRICS if metric.key != "refusal"]
    rows.append(Row(next(m for m in HEURISTIC_METRICS if m.key == "refusal"), cells(0.0, 0.0, 0.0)))
    rows.append(Row(judge_metric(LONG_JUDGE), cells(1.5, 1.6, 1.7)))
    rows.append(
        Row(
            Metric("kl", "KL from base (nats/response, sampled) over the first 48 tokens", "mean", None), cells(0, 1, 2)
        )
    )
    win = Estimate(0.55, 0.45, 0.65, 50, "test")
    pairwise = [
        PairwiseResult(model, baseline, judge, [1.0, 0.5], 0, [], 0, win, win)
        for model, baseline in zip(LONG_LABELS[1:], LONG_LABELS)
        for judge in ("verifier", LONG_JUDGE, "openai:meta-llama/Llama-3.1-70B-Instruct-Turbo-with-a-suffix")
    ]
    return EvalReport(
        labels=LONG_LABELS,
        models={
            label: {"spec": f"runs/{label}", "identity": "0" * 64, "path": label, "adapter": None}
            for label in LONG_LABELS
        },
        prompts=[EvalPrompt(str(i), "p") for i in range(50)],
        generations={},
        scores={},
        rows=rows,
        delta_pair=(LONG_LABELS[2], LONG_LABELS[1]),
        deltas=[],
        pairwise=pairwise,
        instructions={},
        heldout=[],
        heldout_info={},
        kl={},
        settings={
            "judges": ["verifier", LONG_JUDGE],
            "prompts": "prompts.jsonl",
            "generation": {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 8, "seed": 0, "prompt_format": "auto"},
        },
        runs={},
        timings={},
        generation_counts={},
        judge_stats={},
    )


def _drawn_tick_labels(axis, coordinate: int) -> list:
    """The tick labels matplotlib draws: those whose tick lies within the axis' view (it keeps others, unplaced)."""
    low, high = sorted(axis.get_view_interval())
    span = 1e-9 * max(1.0, abs(high - low))
    return [t for t in axis.get_ticklabels() if low - span <= t.get_position()[coordinate] <= high + span]


def text_overflows(figure) -> list[str]:
    """Every title and tick label that leaves the figure, runs past its own plot's sides, or overlaps a text of
    another plot; measured after drawing, in display pixels."""
    from matplotlib.text import Text

    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    placed, problems = [], []
    for index, ax in enumerate(figure.axes):
        plot = ax.get_window_extent(renderer)
        titles = [t for t in ax.get_children() if isinstance(t, Text)]
        for text in [*titles, *_drawn_tick_labels(ax.xaxis, 0), *_drawn_tick_labels(ax.yaxis, 1)]:
            if not (text.get_visible() and text.get_text()):
                continue
            box = text.get_window_extent(renderer)
            name = repr(text.get_text())
            if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > figure.bbox.x1 + 0.5 or box.y1 > figure.bbox.y1 + 0.5:
                problems.append(f"{name} leaves the figure")
            if text in titles and (box.x0 < plot.x0 - 2 or box.x1 > plot.x1 + 2):
                problems.append(f"{name} runs past its plot ({box.x0:.0f}-{box.x1:.0f} vs {plot.x0:.0f}-{plot.x1:.0f})")
            placed.append((index, name, box))
    for i, (ax_a, name_a, a) in enumerate(placed):
        for ax_b, name_b, b in placed[i + 1 :]:
            if ax_a != ax_b and a.overlaps(b):
                problems.append(f"{name_a} overlaps {name_b}")
    return problems


def test_report_figures_keep_long_judge_and_model_names_inside_their_plots():
    from prefalign.evaluate.plots import ifeval_figure, metrics_figure, win_rate_figure

    report = _eval_report()
    for build in (metrics_figure, win_rate_figure, ifeval_figure):
        figure = build(report)
        assert figure is not None
        assert text_overflows(figure) == [], build.__name__
    titles = [ax.get_title(loc="left") for ax in metrics_figure(report).axes]
    assert any(title.startswith("Judge score: reward model") for title in titles), titles
    assert "final" in " ".join(titles)  # the short label keeps the path's tail: reward/final


def test_a_metric_the_same_for_every_model_gets_no_plot(tmp_path):
    from prefalign.evaluate.plots import constant_rows, metrics_figure, report_figures

    report = _eval_report()
    assert [row.metric.key for row in constant_rows(report)] == ["refusal"]
    titles = [ax.get_title(loc="left") for ax in metrics_figure(report).axes]
    assert not any(title.startswith("Refusal") for title in titles)
    assert len(titles) == len(report.rows) - 4 - 1  # all but the IFEval rows (their own figure) and refusals
    drawn = report_figures(report, tmp_path)
    assert [path.name for _, path in drawn] == ["ifeval.png", "win_rates.png", "metrics.png"]
    assert all(path.read_bytes().startswith(PNG_MAGIC) for _, path in drawn)


def test_judge_labels_are_short_and_the_full_spec_stays_in_the_judges_table(tmp_path):
    from prefalign.evaluate.report_html import render_html
    from prefalign.evaluate.table import judge_label

    assert judge_label("reward-model:/abs/path/runs/demo/reward/final") == "reward model (reward/final)"
    assert judge_label("verifier") == "verifier"
    assert len(judge_label("openai:" + "x" * 80)) == 32
    from dataclasses import replace

    page = render_html(replace(_eval_report(), prompts=[]), tmp_path / "plots")  # no responses to browse
    assert page.count(LONG_JUDGE) == 1 + 2  # the Judges table, and the hover title of its two win-rate rows
    assert "<h3>Judges</h3>" in page and "Judge score: reward model (2026-11-30-demo-with-a-long-name" not in page
    assert "Not drawn, the same for every model: Refusal rate (phrase list): 0.000." in page
