"""`--report-to`: a short DPO run logs to TensorBoard, W&B, Trackio and MLflow at once (each in its local or offline
mode, nothing reaching the network), is resumed with more steps, and each tracker's store is read back: the same
metric names, steps and values as metrics.jsonl, the run's config, and one run continued rather than a second one."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prefalign.cli import main
from prefalign.errors import PrefalignError
from prefalign.pipeline.config import DemoConfig
from prefalign.train.config import DPOConfig
from prefalign.train.trackers import RUN_IDS_FILE, check_report_to
from test_train_support import TIMING_KEYS, read_records, write_pairs

TRACKERS = [name for name in ("tensorboard", "wandb", "trackio", "mlflow") if importlib.util.find_spec(name)]
RUN_NAME = "tiny-dpo"


def _offline_env(root: Path) -> dict[str, str]:
    """Every tracker local or offline, under `root`; any network attempt fails at once (a proxy that refuses)."""
    env = {key: value for key, value in os.environ.items() if not key.lower().endswith("_proxy")}
    return {
        **env,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(root / "wandb"),
        "WANDB_CACHE_DIR": str(root / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(root / "wandb-config"),
        "TRACKIO_DIR": str(root / "trackio"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "HF_HUB_OFFLINE": "1",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }


def _dpo(env: dict[str, str], *options: str) -> None:
    command = [sys.executable, "-m", "prefalign", "dpo", "--report-to", *TRACKERS, *options]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def dpo_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 6-step DPO run with a checkpoint at step 4, resumed with --max-steps 9: steps 5 and 6 are run twice."""
    if not TRACKERS:
        pytest.skip("no tracker installed (pip install 'prefalign[dev]')")
    root = tmp_path_factory.mktemp("trackers")
    env = _offline_env(root)
    (root / "wandb").mkdir()
    out = root / "run"
    options = [
        *("--model", str(tiny_model_dir), "--data", str(write_pairs(root / "pairs.jsonl", 16))),
        *("--output-dir", str(out), "--run-name", RUN_NAME, "--eval-split", "0.25", "--eval-steps", "3"),
        *("--logging-steps", "1", "--save-steps", "4", "--learning-rate", "1e-3", "--lr-schedule", "constant"),
        *("--no-progress", "--no-plots"),
    ]
    _dpo(env, *options, "--max-steps", "6")
    first_ids = json.loads((out / RUN_IDS_FILE).read_text())
    _dpo(env, *options, "--max-steps", "9", "--resume")
    return {"root": root, "out": out, "env": env, "first_ids": first_ids, "records": read_records(out)}


def _expected(records: list[dict[str, Any]], *, timing: bool) -> dict[tuple[str, int], float]:
    """metrics.jsonl as {(split/name, step): value}, non-finite (null) values left out, timing keys too unless asked
    (a tracker that cannot rewind keeps the first run's timings of the steps the resumed run did again)."""
    return {
        (f"{r['split']}/{key}", r["step"]): value
        for r in records
        for key, value in r.items()
        if key not in ("step", "split") and value is not None and (timing or key not in TIMING_KEYS)
    }


def _assert_arrived(got: dict[tuple[str, int], float], records: list[dict[str, Any]], *, timing: bool) -> None:
    expected = _expected(records, timing=timing)
    if not timing:
        got = {(key, step): value for (key, step), value in got.items() if key.split("/", 1)[1] not in TIMING_KEYS}
    assert sorted(got) == sorted(expected)
    assert {name for name, _ in got} >= {"train/loss", "train/rewards/accuracies", "eval/loss", "train/learning_rate"}
    assert {step for _, step in got} == set(range(10))  # eval at 0, 3, 6, 9; train at 1..9
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_the_resumed_run_cut_metrics_jsonl_back_and_went_on(dpo_run):
    steps = [(r["step"], r["split"]) for r in dpo_run["records"]]
    assert len(steps) == len(set(steps)) == 9 + 4  # train at 1..9, eval at 0, 3, 6, 9: steps 5 and 6 once each


@pytest.mark.skipif("tensorboard" not in TRACKERS, reason="tensorboard is not installed")
def test_tensorboard_received_the_run(dpo_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(dpo_run["out"] / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    got = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    _assert_arrived(got, dpo_run["records"], timing=True)  # purge_step: the resumed run's values replace the first's
    config = [
        json.loads(t.tensor_proto.string_val[0].decode().strip("`\n")) for t in events.Tensors("config/text_summary")
    ]
    assert config[-1]["max_steps"] == 9 and config[-1]["objective"] == "dpo"


def _wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a `.wandb` file: W&B's 7-byte header, then LevelDB's log format (32 KiB blocks of
    chunks, each `crc32c:4 length:2 type:1` then the data; type 1 a whole record, 2/3/4 its first/middle/last part)."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B"
    records, pending, position = [], b"", 7
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        chunk, position = data[position + 7 : position + 7 + length], position + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


@pytest.mark.skipif("wandb" not in TRACKERS, reason="wandb is not installed")
def test_wandb_received_the_run_and_the_resume_continued_it(dpo_run):
    run_id = dpo_run["first_ids"]["wandb"]["id"]
    assert json.loads((dpo_run["out"] / RUN_IDS_FILE).read_text())["wandb"]["id"] == run_id
    run_dirs = sorted((dpo_run["root"] / "wandb" / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 2 and all(d.name.endswith(f"-{run_id}") for d in run_dirs)  # one run, in two sessions
    got, config = {}, {}
    for run_dir in run_dirs:
        for record in _wandb_records(next(run_dir.glob("*.wandb"))):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                assert record.run.run_id == run_id and record.run.display_name == RUN_NAME
                config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
            elif kind == "history":
                step = record.history.step.num
                for item in record.history.item:
                    key = item.key or "/".join(item.nested_key)
                    if not key.startswith("_"):
                        assert (key, step) not in got, f"{key} at step {step} sent twice"
                        got[key, step] = json.loads(item.value_json)
    _assert_arrived(got, dpo_run["records"], timing=False)
    assert config["beta"] == 0.1 and config["max_steps"] == 9 and config["objective"] == "dpo"


@pytest.mark.skipif("trackio" not in TRACKERS, reason="trackio is not installed")
def test_trackio_received_the_run_and_the_resume_continued_it(dpo_run):
    assert dpo_run["first_ids"]["trackio"] == {"project": "prefalign", "name": RUN_NAME}
    # trackio reads TRACKIO_DIR when imported: read the store in a process that has it from the start.
    script = (
        "import json, trackio; from trackio.sqlite_storage import SQLiteStorage as S\n"
        "runs = list(trackio.Api().runs('prefalign'))\n"
        "print(json.dumps({'runs': [r.name for r in runs], 'config': runs[0].config,"
        f" 'logs': S.get_logs('prefalign', {RUN_NAME!r})}}, default=str))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=dpo_run["env"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    stored = json.loads(done.stdout.strip().splitlines()[-1])
    assert stored["runs"] == [RUN_NAME]
    got = {}
    for log in stored["logs"]:
        for key, value in log.items():
            if "/" in key and key.split("/", 1)[0] in ("train", "eval"):
                assert (key, log["step"]) not in got, f"{key} at step {log['step']} sent twice"
                got[key, log["step"]] = value
    _assert_arrived(got, dpo_run["records"], timing=False)
    assert stored["config"]["beta"] == 0.1 and stored["config"]["objective"] == "dpo"


@pytest.mark.skipif("mlflow" not in TRACKERS, reason="mlflow is not installed")
def test_mlflow_received_the_run_and_the_resume_continued_it(dpo_run):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=dpo_run["env"]["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("prefalign")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == dpo_run["first_ids"]["mlflow"]["run_id"]
    assert run.info.run_name == RUN_NAME and run.info.status == "FINISHED"
    got = {}
    for key in run.data.metrics:
        for point in client.get_metric_history(run.info.run_id, key):
            assert (key, point.step) not in got, f"{key} at step {point.step} sent twice"
            got[key, point.step] = point.value
    _assert_arrived(got, dpo_run["records"], timing=False)
    assert run.data.params["beta"] == "0.1" and run.data.params["max_steps"] == "6"  # parameters keep their first value


def test_unknown_combined_or_missing_trackers_are_one_line_errors(monkeypatch):
    assert check_report_to(["none"]) == ()
    assert check_report_to([]) == ()
    with pytest.raises(PrefalignError, match=r"--report-to comet: not a tracker; choose from tensorboard, wandb"):
        check_report_to(["comet"])
    with pytest.raises(PrefalignError, match="`none` cannot be combined"):
        check_report_to(["none", "tensorboard"])
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    with pytest.raises(
        PrefalignError, match=r"^--report-to wandb: wandb is not installed; pip install 'prefalign\[wandb\]'$"
    ):
        check_report_to(["tensorboard", "wandb"])


def test_a_missing_tracker_fails_before_anything_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    argv = ["dpo", "--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "no-data.jsonl")]
    assert main([*argv, "--output-dir", str(tmp_path / "out"), "--report-to", "mlflow"]) == 2
    err = capsys.readouterr().err
    assert err == "prefalign: error: --report-to mlflow: mlflow is not installed; pip install 'prefalign[mlflow]'\n"
    assert not (tmp_path / "out").exists()
    with pytest.raises(PrefalignError, match="mlflow is not installed"):
        DemoConfig(report_to=["mlflow"])  # the demo refuses before its first stage


def test_the_demo_passes_its_trackers_to_every_training_stage():
    demo = DemoConfig(output_dir="runs/mine", report_to=TRACKERS[:1] or ["none"], project="team")
    for stage in ("sft", "reward", "dpo"):
        config = demo.training_config(stage, model="m", data="d.jsonl", output_dir=f"runs/mine/{stage}")
        assert (config.report_to, config.project, config.run_name) == (demo.report_to, "team", f"mine-{stage}")
    assert DPOConfig(model="m", data="d", output_dir="o").report_to == ["none"]  # the default: no tracker
