"""Distributed helpers: one process by default, and a real 2-process gloo group under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from prefalign.errors import PrefalignError
from prefalign.train.distributed import DistInfo, cleanup, init_distributed, reduce_metrics, shard

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def plain_env(monkeypatch):
    for name in _TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process_without_torchrun(plain_env):
    info = init_distributed(device_type="cpu")
    assert info == DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)
    assert not info.is_distributed
    items = list("abcde")
    assert shard(items, info) == items
    sums = {"loss": torch.tensor(1.5), "count": torch.tensor(3)}
    assert reduce_metrics(sums, info) is sums
    cleanup(info)  # nothing to leave: no error

    plain_env.setenv("WORLD_SIZE", "1")
    assert init_distributed(device_type="cpu").world_size == 1


def test_bad_launch_environment_is_a_clear_error(plain_env):
    plain_env.setenv("WORLD_SIZE", "two")
    with pytest.raises(PrefalignError, match="WORLD_SIZE='two' is not an integer"):
        init_distributed(device_type="cpu")
    plain_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(PrefalignError, match="RANK is not set; launch with torchrun"):
        init_distributed(device_type="cpu")
    with pytest.raises(PrefalignError, match="device 'tpu' is not supported"):
        init_distributed(device_type="tpu")


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_shards_cover_every_item_once(world_size):
    for n in range(12):
        items = [f"pair{i}" for i in range(n)]
        infos = [DistInfo(r, world_size, r, torch.device("cpu"), r == 0) for r in range(world_size)]
        shards = [shard(items, info) for info in infos]
        assert sorted(item for part in shards for item in part) == sorted(items)
        # Uneven batches: the first n % world_size ranks take one more item.
        assert [len(part) for part in shards] == [n // world_size + (r < n % world_size) for r in range(world_size)]
        assert shards == [shard(items, info) for info in infos]  # deterministic


_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from prefalign.train.distributed import barrier, cleanup, init_distributed, reduce_metrics, shard

    info = init_distributed(device_type="cpu")
    part = shard(list(range(7)), info)
    # Built in a different key order on each rank: reduce_metrics must still pair them up.
    sums = {"loss": torch.tensor(float(sum(part))), "pairs": torch.tensor(len(part))}
    if info.rank == 1:
        sums = {"pairs": sums["pairs"], "loss": sums["loss"]}
    sums["per_rank"] = torch.zeros(2, dtype=torch.float32)
    sums["per_rank"][info.rank] = 1.5
    reduced = reduce_metrics(sums, info)
    barrier(info)
    result = {
        "rank": info.rank, "world_size": info.world_size, "local_rank": info.local_rank, "is_main": info.is_main,
        "shard": part, "loss": reduced["loss"].item(), "pairs": reduced["pairs"].item(),
        "pairs_dtype": str(reduced["pairs"].dtype), "per_rank": reduced["per_rank"].tolist(),
    }
    with open(os.path.join(sys.argv[1], f"rank{info.rank}.json"), "w") as handle:
        json.dump(result, handle)
    cleanup(info)
    """
)


def test_two_processes_under_torchrun(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {key: value for key, value in os.environ.items() if key not in _TORCHRUN_VARS}
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(script),
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [(r["rank"], r["local_rank"], r["world_size"], r["is_main"]) for r in results] == [
        (0, 0, 2, True),
        (1, 1, 2, False),
    ]
    assert [r["shard"] for r in results] == [[0, 2, 4, 6], [1, 3, 5]]
    for r in results:  # every rank sees the global sums, in the dtypes it passed
        assert r["loss"] == float(sum(range(7)))
        assert r["pairs"] == 7 and r["pairs_dtype"] == "torch.int64"
        assert r["per_rank"] == [1.5, 1.5]
