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
