"""prefalign's generation against HF `model.generate`: same model, prompts, batch size and budget, on this machine.

    python benchmarks/generation.py --prompts 256 --repeats 3

Both complete the first N built-in prompts (`prefalign.prompts.builtin_prompts(0, "all")`, chat template applied) with
SmolLM2-135M-Instruct, at most 128 new tokens, batch 64, greedy and sampled (temperature 0.7, top-p 0.95), in fp32
and bf16. HF gets the prompts in the same order as prefalign (longest first, so each of its batches pads little) and
stops a row at the model's end-of-turn token; HF keeps a finished row in its batch until the whole batch is done,
prefalign hands the slot to the next prompt (continuous batching). Useful tokens are a row's tokens up to and
including its stop token: what the caller gets.

Per setting the script prints each side's useful tokens/s (medians over `--repeats`, the two sides alternating which
runs first), the ratio, and the fraction of this machine's matmul rate each reaches: a token costs about 2 x (the
model's parameters) FLOPs, and the rate is measured here on matmuls of the decode step's shapes.

Greedy fp32 answers must equal HF's token for token. Where they differ, the script recomputes the logits at the first
differing position in fp64 from the shared prefix and accepts the difference only when the two tokens' logits are a
near tie there (within `--tie-tolerance` of each other in fp32, so the order of a kernel's additions decides); any
other difference fails the run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from prefalign.data.tokenize import prompt_token_ids
from prefalign.generate import GenerationConfig, generate
from prefalign.models.loading import load_model, load_tokenizer, stop_token_ids
from prefalign.prompts import builtin_prompts

MAX_NEW_TOKENS, BATCH = 128, 64
SAMPLING = {"temperature": 0.7, "top_p": 0.95}


def matmul_gflops(dtype: torch.dtype, hidden: int, intermediate: int, rows: int = BATCH, repeats: int = 30) -> float:
    """This machine's matmul rate (GFLOP/s) on the decode step's shapes: `rows` tokens through the MLP's matrices."""
    x = torch.randn(rows, hidden, dtype=dtype)
    up = torch.randn(hidden, intermediate, dtype=dtype)
    down = torch.randn(intermediate, hidden, dtype=dtype)
    for _ in range(3):
        (x @ up) @ down
    start = time.perf_counter()
    for _ in range(repeats):
        (x @ up) @ down
    seconds = (time.perf_counter() - start) / repeats
    return 2 * 2 * rows * hidden * intermediate / seconds / 1e9


def useful(ids: list[int], stops: set[int]) -> list[int]:
    """A row's tokens up to and including its first stop token."""
    for i, token in enumerate(ids):
        if token in stops:
            return ids[: i + 1]
    return ids


def run_prefalign(model: Any, tokenizer: Any, prompts: list[str], sampled: bool, dtype: str) -> list[list[int]]:
    config = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, batch_size=BATCH, dtype=dtype, seed=0)
    if sampled:
        config = GenerationConfig(**{**config.__dict__, **SAMPLING})
    return [g.token_ids for g in generate(model, tokenizer, prompts, config, progress=False)]


def run_hf(model: Any, tokenizer: Any, prompts: list[str], sampled: bool) -> list[list[int]]:
    """HF `generate` over batches of `BATCH` prompts, longest first, left-padded."""
    stops = stop_token_ids(model, tokenizer)
    encoded = [prompt_token_ids(p, tokenizer, "auto") for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    tokenizer.padding_side = "left"
    outputs: dict[int, list[int]] = {}
    options = {"do_sample": True, **SAMPLING} if sampled else {"do_sample": False}
    torch.manual_seed(0)
    with torch.inference_mode():
        for start in range(0, len(order), BATCH):
            batch = order[start : start + BATCH]
            inputs = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
            out = model.generate(
                **inputs,
                max_new_tokens=MAX_NEW_TOKENS,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
                **options,
            )
            for i, row in zip(batch, out[:, inputs["input_ids"].shape[1] :].tolist()):
                outputs[i] = useful(row, set(stops))
    return [outputs[i] for i in range(len(prompts))]


def timed(run: Callable[[], list[list[int]]]) -> tuple[list[list[int]], float]:
    start = time.perf_counter()
    outputs = run()
    return outputs, time.perf_counter() - start


def check_greedy(
    model: Any, tokenizer: Any, prompts: list[str], ours: list[list[int]], hf: list[list[int]], tolerance: float
) -> int:
    """Count the near-tie differences between the two greedy answer sets; exit on any other difference."""
    near_ties = 0
    for prompt, a, b in zip(prompts, ours, hf):
        if a == b:
            continue
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        if at == min(len(a), len(b)):
            sys.exit(f"FAIL: {prompt[:60]!r}: one answer is a prefix of the other (stopping differs)")
        ids = prompt_token_ids(prompt, tokenizer, "auto") + a[:at]
        with torch.inference_mode():
            logits = model(torch.tensor([ids])).logits[0, -1].float()
        gap = abs(float(logits[a[at]] - logits[b[at]]))
        if gap > tolerance:
            sys.exit(f"FAIL: {prompt[:60]!r}: token {at} differs ({a[at]} vs {b[at]}) with a logit gap of {gap:.2e}")
        near_ties += 1
    return near_ties


def measure(
    args: argparse.Namespace, models: dict[str, Any], tokenizer: Any, prompts: list[str], dtype: str, mode: str
) -> tuple[list[float], list[float]]:
    """Useful tokens/s of prefalign and of HF per repeat, the two alternating which runs first; checks greedy fp32."""
    sampled = mode == "sampled"
    sides: dict[str, Callable[[], list[list[int]]]] = {
        # prefalign gets the fp32 model and converts it itself (a copy), as a user's run does.
        "prefalign": partial(run_prefalign, models["float32"], tokenizer, prompts, sampled, dtype),
        "hf": partial(run_hf, models[dtype], tokenizer, prompts, sampled),
    }
    rates: dict[str, list[float]] = {"prefalign": [], "hf": []}
    answers: dict[str, list[list[int]]] = {}
    for repeat in range(args.repeats):
        for name in ["prefalign", "hf"] if repeat % 2 == 0 else ["hf", "prefalign"]:
            answers[name], seconds = timed(sides[name])
            tokens = sum(len(a) for a in answers[name])
            rates[name].append(tokens / seconds)
            print(f"  {dtype} {mode} {name}: {tokens} useful tokens in {seconds:.1f} s = {tokens / seconds:.0f}/s")
    if dtype == "float32" and mode == "greedy":
        ties = check_greedy(
            models["float32"], tokenizer, prompts, answers["prefalign"], answers["hf"], args.tie_tolerance
        )
        print(f"  greedy fp32 answers: {len(prompts) - ties} identical, {ties} differ at a near tie")
    return rates["prefalign"], rates["hf"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--modes", nargs="+", default=["greedy", "sampled"], choices=["greedy", "sampled"])
    parser.add_argument("--tie-tolerance", type=float, default=1e-3)
    args = parser.parse_args()

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    models = {dtype: load_model("smollm2-135m-instruct", dtype=dtype) for dtype in {"float32", *args.dtypes}}
    prompts = [p["prompt"] for p in builtin_prompts(0, "all")][: args.prompts]
    config = models["float32"].config
    gflop_per_token = 2 * sum(p.numel() for p in models["float32"].parameters()) / 1e9
    print(
        f"{len(prompts)} prompts, at most {MAX_NEW_TOKENS} new tokens, batch {BATCH}, {torch.get_num_threads()} threads"
    )
    table = ["| dtype | decoding | prefalign | HF generate | ratio |", "|---|---|---|---|---|"]
    for dtype in args.dtypes:
        peak = matmul_gflops(getattr(torch, dtype), config.hidden_size, config.intermediate_size)
        print(f"{dtype}: matmul rate on the decode step's shapes {peak:.0f} GFLOP/s")
        for mode in args.modes:
            ours, theirs = (statistics.median(r) for r in measure(args, models, tokenizer, prompts, dtype, mode))
            table.append(
                f"| {dtype} | {mode} | {ours:.0f} ({ours * gflop_per_token / peak:.0%}) "
                f"| {theirs:.0f} ({theirs * gflop_per_token / peak:.0%}) | {ours / theirs:.2f}x |"
            )
    print(f"\nmedians of {args.repeats}: useful tokens/s (fraction of the matmul rate)")
    print("\n".join(table))


if __name__ == "__main__":
    main()
