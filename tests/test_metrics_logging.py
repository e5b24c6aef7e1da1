"""metrics.jsonl, its records in TensorBoard, resume truncation and summary.json (tests/test_trackers.py: the other
trackers, and every tracker in a real DPO run)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from prefalign.train.metrics import MetricsLogger, progress_bar, read_metrics, write_summary
from prefalign.train.trackers import TensorBoardTracker


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_are_json_lines_flushed_as_written(tmp_path):
    logger = MetricsLogger(tmp_path)
    logger.log(1, "train", {"loss": 0.6931, "rewards/margins": torch.tensor(0.25), "tokens_per_second": 1200})
    # Flushed per line: readable before close (a killed run keeps what it logged).
    assert _lines(tmp_path / "metrics.jsonl") == [
        {"step": 1, "split": "train", "loss": 0.6931, "rewards/margins": 0.25, "tokens_per_second": 1200.0}
    ]
    logger.log(2, "eval", {"loss": float("nan"), "kl": float("inf"), "rewards/accuracies": 0.5})
    logger.close()
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON: non-finite values are null
    assert _lines(tmp_path / "metrics.jsonl")[1] == {
        "step": 2,
        "split": "eval",
        "loss": None,
        "kl": None,
        "rewards/accuracies": 0.5,
    }
    with pytest.raises(ValueError, match="reserved"):
        MetricsLogger(tmp_path / "other").log(3, "train", {"step": 1.0})


def test_a_fresh_run_starts_a_new_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 9, "split": "train", "loss": 1.0}\n')
    with MetricsLogger(tmp_path) as logger:
        logger.log(1, "train", {"loss": 2.0})
    assert _lines(tmp_path / "metrics.jsonl") == [{"step": 1, "split": "train", "loss": 2.0}]


def test_resume_drops_records_after_the_checkpoint_and_a_torn_line(tmp_path):
    def run(logger, steps):
        for step in steps:
            logger.log(step, "train", {"loss": 1.0 / step})
            if step % 2 == 0:
                logger.log(step, "eval", {"loss": 2.0 / step})

    with MetricsLogger(tmp_path / "uninterrupted") as logger:
        run(logger, range(1, 7))

    killed = tmp_path / "killed"
    logger = MetricsLogger(killed)
    run(logger, range(1, 6))  # checkpoint at 4, then killed during step 5's write:
    logger.close()
    with open(killed / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 6, "split": "tr')
    with MetricsLogger(killed, resume_step=4) as logger:
        assert [r["step"] for r in read_metrics(killed / "metrics.jsonl")] == [1, 2, 2, 3, 4, 4]
        run(logger, range(5, 7))
    assert (killed / "metrics.jsonl").read_text() == (tmp_path / "uninterrupted" / "metrics.jsonl").read_text()


def test_disabled_logger_writes_nothing(tmp_path):
    logger = MetricsLogger(tmp_path / "rank1", enabled=False)
    logger.log(1, "train", {"loss": 1.0})
    logger.close()
    assert not (tmp_path / "rank1").exists()


def test_tensorboard_scalars_are_named_split_slash_key(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path, trackers=[TensorBoardTracker(tmp_path)], config={"beta": 0.1}) as logger:
        logger.log(1, "train", {"loss": 0.7, "rewards/margins": 0.0})
        logger.log(2, "train", {"loss": 0.6, "rewards/margins": float("nan")})
        logger.log(2, "eval", {"loss": 0.65})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["eval/loss", "train/loss", "train/rewards/margins"]
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("train/loss")] == [(1, 0.7), (2, 0.6)]
    assert [e.step for e in events.Scalars("train/rewards/margins")] == [1]  # the NaN was not written
    (config,) = events.Tensors("config/text_summary")
    assert '"beta": 0.1' in config.tensor_proto.string_val[0].decode()


def test_tensorboard_resume_replaces_the_steps_after_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path, trackers=[TensorBoardTracker(tmp_path)]) as logger:
        for step in range(1, 6):
            logger.log(step, "train", {"loss": float(step)})
    with MetricsLogger(tmp_path, trackers=[TensorBoardTracker(tmp_path)], resume_step=3) as logger:
        for step in range(4, 7):
            logger.log(step, "train", {"loss": 10.0 * step})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 40.0),
        (5, 50.0),
        (6, 60.0),
    ]


def test_no_tracker_writes_nothing_but_metrics_jsonl(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log(1, "train", {"loss": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
    assert _lines(tmp_path / "metrics.jsonl") == [{"step": 1, "split": "train", "loss": 0.5}]


def test_disabled_logger_starts_no_tracker(tmp_path):
    logger = MetricsLogger(tmp_path / "rank1", enabled=False, trackers=[TensorBoardTracker(tmp_path / "rank1")])
    logger.log(1, "train", {"loss": 1.0})
    logger.close()
    assert not (tmp_path / "rank1").exists()


def test_write_summary_is_valid_json(tmp_path):
    path = write_summary(tmp_path / "out", {"final": {"loss": math.nan, "steps": 10}, "eval": [0.5, math.inf]})
    assert path == tmp_path / "out" / "summary.json"
    assert json.loads(path.read_text()) == {"final": {"loss": None, "steps": 10}, "eval": [0.5, None]}
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]  # no temp file left behind


def test_progress_bar_starts_at_the_resumed_step(capsys):
    bar = progress_bar(10, start_step=4)
    bar.update()
    bar.close()
    assert "5/10" in capsys.readouterr().err
    quiet = progress_bar(10, enabled=False)  # ranks other than 0
    quiet.update()
    quiet.close()
    assert capsys.readouterr().err == ""
