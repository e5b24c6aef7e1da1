"""End-of-run plots: one valid PNG per metric family with data, nothing for families the run did not log."""

from __future__ import annotations

import json

from prefalign.train.plots import make_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_metrics(path, records) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def _dpo_records() -> list[dict]:
    records = []
    for step in range(1, 31):
        records.append(
            {
                "step": step, "split": "train", "loss": 0.69 - 0.01 * step, "rewards/margins": 0.02 * step,
                "rewards/chosen": 0.01 * step, "rewards/rejected": -0.01 * step,
                "rewards/accuracies": min(1, step / 20),
                "logps/chosen": -40 - 0.1 * step, "logps/rejected": -42 - 0.3 * step, "kl": 0.001 * step,
                "logratio": 0.05 * step, "grad_norm": 1.0, "learning_rate": 1e-4, "epoch": step / 30,
            }
        )
        if step % 10 == 0:
            records.append(
                {"step": step, "split": "eval", "loss": 0.7 - 0.01 * step, "rewards/margins": 0.015 * step,
                 "rewards/accuracies": 0.5 + step / 100, "kl": None}
            )
    return records


def test_dpo_metrics_give_one_png_per_family(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    _write_metrics(metrics, _dpo_records())
    paths = make_plots(metrics, tmp_path / "plots")
    names = [p.name for p in paths]
    assert names == [
        "loss.png", "reward_gap.png", "accuracy.png", "kl.png", "rewards.png", "logps.png", "logratio.png",
        "grad_norm.png", "learning_rate.png",
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
