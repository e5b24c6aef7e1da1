"""bf16 autocast, the one switch behind every "compute in bf16" setting: training's `--precision` and the
evaluation's `--dtype` for its scoring passes (weights stay as loaded; matmuls run in bf16, reductions in fp32); and
`fast_bf16`, which every "auto" precision asks whether bf16 pays on this device."""

from __future__ import annotations

import functools
import time
from contextlib import AbstractContextManager, nullcontext, suppress

import torch

# "auto" picks bf16 on a CPU only where it multiplies matrices at least this many times faster than fp32. A CPU flag
# (AVX512-BF16, AMX) says the instructions exist, not that they are fast: an Intel Xeon with AVX512-BF16 multiplied
# bf16 slower than fp32, where an AMD EPYC with the same flag ran it much faster (README, Generation, `--dtype`).
BF16_MIN_SPEEDUP = 1.25


def fast_bf16(device: torch.device | str) -> bool:
    """Whether bf16 is the faster way to compute on `device`: a CUDA GPU that supports it, or a CPU that has bf16
    instructions and measures at least `BF16_MIN_SPEEDUP` times its fp32 matmul rate in bf16 (`cpu_bf16_speedup`)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    if not _cpu_has_bf16():
        return False  # emulated bf16: slower than fp32 everywhere, no need to measure
    return cpu_bf16_speedup() >= BF16_MIN_SPEEDUP


def _cpu_has_bf16() -> bool:
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def auto_precision_note(device: torch.device | str) -> str:
    """What "auto" picks on `device`, and why, in a few words (the demo prints it)."""
    device = torch.device(device)
    if device.type == "cuda" or not _cpu_has_bf16():
        return f"{'bf16' if fast_bf16(device) else 'fp32'} on {device}" + (
            "" if device.type == "cuda" else " (no bf16 instructions)"
        )
    speedup = cpu_bf16_speedup()
    chosen = "bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32"
    return f"{chosen} on cpu (bf16 matrix products at {speedup:.2f}x the fp32 rate; bf16 needs {BF16_MIN_SPEEDUP}x)"


@functools.cache
def cpu_bf16_speedup() -> float:
    """This CPU's bf16 matmul rate over its fp32 rate, on the threads torch uses. Measured once per machine: kept in
    `$PREFALIGN_HOME/cache/cpu-bf16-speedup.json` under the CPU's name, the torch version and the thread count, so
    that every later process (and so every "auto" setting a demo stage records) agrees with the first."""
    import json
    import platform

    from ..errors import PrefalignError
    from ..fileio import write_json_atomic
    from .registry import prefalign_home

    path = prefalign_home() / "cache" / "cpu-bf16-speedup.json"
    key = f"{_cpu_name() or platform.machine()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    try:
        known = json.loads(path.read_text())
        speedup = float(known[key]) if isinstance(known, dict) and key in known else None
    except (OSError, ValueError, TypeError):
        known, speedup = {}, None
    if speedup is None or not speedup > 0:
        speedup = _measure_bf16_speedup()
        # An unwritable cache (write_json_atomic reports it as a PrefalignError) is not an error: measured again next
        # time.
        with suppress(OSError, PrefalignError):
            write_json_atomic(path, {**(known if isinstance(known, dict) else {}), key: speedup})
    return speedup


def _cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            lines = cpuinfo.read().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def _measure_bf16_speedup() -> float:
    """A decoder-sized product, [256, 576] x [576, 1536], timed in each dtype in alternating rounds, best round of
    each: a fraction of a second."""
    x = torch.randn(256, 576, generator=torch.Generator().manual_seed(0))
    w = torch.randn(1536, 576, generator=torch.Generator().manual_seed(1))
    operands = {torch.float32: (x, w), torch.bfloat16: (x.bfloat16(), w.bfloat16())}
    best = {dtype: float("inf") for dtype in operands}
    for _ in range(6):  # the first round of each warms its kernels up and rarely counts
        for dtype, (a, b) in operands.items():
            start = time.perf_counter()
            for _ in range(8):
                torch.nn.functional.linear(a, b)
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.float32] / best[torch.bfloat16]


def bf16_autocast(enabled: bool, device: torch.device | str) -> AbstractContextManager[object]:
    """bf16 autocast on `device`'s type when `enabled`, else nothing."""
    if not enabled:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
