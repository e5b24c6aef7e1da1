"""Time the reward-model judge on an evaluation's answers: each prompt computed once for all its answers (the one-row
layout `score_token_rows` takes where the model runs pair attention) against a padded row per answer.

    python benchmarks/reward_judge_time.py --reward-model runs/demo/reward --responses runs/demo/eval/responses.jsonl

`--responses` is an evaluation's responses.jsonl; every model's answer to every prompt is scored, as the evaluation's
judge scores them (the demo: 3 models x 240 prompts). The two layouts alternate `--repeats` times in one process; it
prints the seconds of each, their medians, the ratio, and the largest difference between the two layouts' rewards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from prefalign.data.tokenize import tokenize_sft
from prefalign.judges.reward_model import RewardModelJudge
from prefalign.models.reward import _score_padded_rows, score_token_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reward-model", required=True, help="a saved reward model (or its training run directory)")
    parser.add_argument("--responses", required=True, help="an evaluation's responses.jsonl")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="answers per forward (the judge's default)")
    args = parser.parse_args()

    judge = RewardModelJudge(args.reward_model)
    rows = []
    with open(args.responses, encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            for answer in record["responses"].values():
                example = tokenize_sft(record["prompt"], answer["text"], judge.tokenizer, judge.tokenize)
                if not example.dropped:
                    rows.append((example.prompt_ids, example.completion_ids))
    pad = judge.tokenizer.pad_token_id
    layouts = {
        "one prompt per group": lambda: score_token_rows(judge.model, rows, pad, args.batch_size),
        "padded rows": lambda: _score_padded_rows(judge.model, rows, pad, args.batch_size),
    }
    tokens = sum(len(p) + len(c) for p, c in rows)
    print(f"{len(rows)} answers, {tokens} tokens as padded rows would hold them (before padding)")
    seconds: dict[str, list[float]] = {name: [] for name in layouts}
    rewards: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        for name, score in layouts.items():
            started = time.perf_counter()
            rewards[name] = score()
            seconds[name].append(time.perf_counter() - started)
            print(f"repeat {repeat + 1}: {name}: {seconds[name][-1]:.1f} s", flush=True)
    grouped, padded = (statistics.median(seconds[name]) for name in layouts)
    difference = (torch.tensor(rewards["one prompt per group"]) - torch.tensor(rewards["padded rows"])).abs().max()
    print(f"medians: one prompt per group {grouped:.1f} s, padded rows {padded:.1f} s: {padded / grouped:.2f}x")
    print(f"largest reward difference between the layouts: {difference.item():.2e}")


if __name__ == "__main__":
    main()
