"""Time prefalign's generation on the built-in held-out prompts, to compare two versions of the code on one machine.

    python benchmarks/generation_time.py --max-new-tokens 128                   # greedy, as the evaluation
    python benchmarks/generation_time.py --max-new-tokens 96 --temperature 0.7  # sampled, as the SFT data and pairs

Run it from two checkouts (`PYTHONPATH=<checkout>/src python benchmarks/generation_time.py ...`), alternating, and
compare the seconds. It prints the seconds, the tokens generated and a digest of every answer's token ids, so two
versions that must decode the same tokens can be checked to do so, and writes the answers' token ids to `--output`
(JSON) for a per-prompt comparison. With `--max-new-tokens 1` it times the prefill alone. With `--profile N` the timed
call runs under torch's profiler and the N operators with the most self CPU time are printed (where the time goes:
matrix products against everything else); its seconds then include the profiler's overhead.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import time

import torch

from prefalign.generate import GenerationConfig, generate
from prefalign.models.loading import load_model, load_tokenizer
from prefalign.prompts import builtin_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=240, help="the first N held-out built-in prompts")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--output", help="write the answers' token ids here (JSON list)")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print the N costliest operators")
    args = parser.parse_args()

    model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    prompts = [record["prompt"] for record in builtin_prompts(0, "heldout")][: args.prompts]
    generate(model, tokenizer, prompts[:8], GenerationConfig(max_new_tokens=8, batch_size=8), progress=False)  # warm
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        batch_size=args.batch_size,
        dtype=args.dtype,
    )
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if args.profile else None
    with profiler or contextlib.nullcontext():
        started = time.perf_counter()
        answers = generate(model, tokenizer, prompts, config, progress=False)
        seconds = time.perf_counter() - started
    ids = [answer.token_ids for answer in answers]
    digest = hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]
    tokens = sum(map(len, ids))
    rate = tokens / seconds
    print(f"{len(prompts)} prompts, {tokens} tokens in {seconds:.1f} s ({rate:.0f} tokens/s), answers {digest}")
    if profiler is not None:
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))
    if args.output:
        with open(args.output, "w") as out:
            json.dump(ids, out)


if __name__ == "__main__":
    main()
