""" "auto" precision: bf16 only where this device computes it faster than fp32, measured, not read off a CPU flag."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from prefalign.models import precision


def test_the_speedup_is_measured_once_per_machine_and_remembered(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFALIGN_HOME", str(tmp_path))
    precision.cpu_bf16_speedup.cache_clear()
    first = precision.cpu_bf16_speedup()
    assert math.isfinite(first) and first > 0
    remembered = json.loads((tmp_path / "cache" / "cpu-bf16-speedup.json").read_text())
    assert list(remembered.values()) == [first] and f"torch {torch.__version__}" in next(iter(remembered))
    # A later process reads it instead of measuring again (so every "auto" a demo stage records agrees).
    precision.cpu_bf16_speedup.cache_clear()
    monkeypatch.setattr(precision, "_measure_bf16_speedup", lambda: pytest.fail("measured again"))
    assert precision.cpu_bf16_speedup() == first
    # A damaged file is measured over, not an error.
    (tmp_path / "cache" / "cpu-bf16-speedup.json").write_text("{not json")
    precision.cpu_bf16_speedup.cache_clear()
    monkeypatch.setattr(precision, "_measure_bf16_speedup", lambda: 0.5)
    assert precision.cpu_bf16_speedup() == 0.5
    # A cache that cannot be written (a file where its directory should be) is not an error either.
    unwritable = tmp_path / "home"
    unwritable.mkdir()
    (unwritable / "cache").write_text("not a directory")
    monkeypatch.setenv("PREFALIGN_HOME", str(unwritable))
    precision.cpu_bf16_speedup.cache_clear()
    assert precision.cpu_bf16_speedup() == 0.5
    precision.cpu_bf16_speedup.cache_clear()


@pytest.mark.parametrize(
    "has_bf16, speedup, expected",
    [(False, None, False), (True, 0.7, False), (True, 1.2, False), (True, 1.25, True), (True, 2.4, True)],
)
def test_a_cpu_takes_bf16_only_with_the_instructions_and_the_speed(monkeypatch, has_bf16, speedup, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: has_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)

    def measured() -> float:
        assert speedup is not None, "a CPU without bf16 instructions is not measured"
        return speedup

    monkeypatch.setattr(precision, "cpu_bf16_speedup", measured)
    assert precision.fast_bf16("cpu") is expected
    note = precision.auto_precision_note("cpu")
    assert note.startswith("bf16 on cpu" if expected else "fp32 on cpu")
    assert ("no bf16 instructions" in note) is (not has_bf16)
    if has_bf16:
        assert f"at {speedup:.2f}x the fp32 rate" in note


def test_generation_auto_dtype_follows_the_measurement(monkeypatch):
    from prefalign.generate import resolve_dtype

    model = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32)  # all it reads of a transformers model
    for fast, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(precision, "fast_bf16", lambda device, fast=fast: fast)
        assert resolve_dtype(model, "auto") == expected
    assert resolve_dtype(model, "float32") == torch.float32
    assert resolve_dtype(model, "bfloat16") == torch.bfloat16
