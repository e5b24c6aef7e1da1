"""`prefalign rm train` and `prefalign rm score`: train a reward model on preference pairs, and score with it.

`rm score` reads either kind of file:
- preference pairs (any format `prefalign data` reads): one output row per pair with both rewards, and the accuracy
  (the chosen answer's reward is higher; a tie counts half) with its 95% Wilson score interval, printed and written to
  OUT.summary.json next to OUT.jsonl;
- responses (`prompt` + `response`/`completion`, or `messages` ending with the answer): one reward per row.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import add_config_args, build_config, config_from_args
from ..console import say
from ..data.tokenize import TokenizeConfig
from ..errors import PrefalignError
from ..fileio import write_json_atomic, write_jsonl_atomic
from ..preflight import check_input, check_output_file
from ..scoring.preference import preference_margin, preference_outcome
from ..train.config import RewardConfig

if TYPE_CHECKING:
    from ..models.reward import RewardModel


@dataclass
class RewardScoreOptions:
    """`prefalign rm score`'s options."""

    model: str = field(metadata={"help": "a reward model directory, or a `rm train` OUTPUT_DIR"})
    data: str = field(metadata={"help": "preference pairs or prompt/response rows (.jsonl[.gz], ...)"})
    output: str = field(metadata={"help": "output JSON Lines file", "flags": ("-o",)})
    data_format: str = field(
        default="auto", metadata={"help": "record format of pairs: auto, hh, explicit, conversational"}
    )
    batch_size: int = field(default=8, metadata={"help": "sequences per forward pass"})
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 (default: cuda when available)"})
    untrained_head: bool = field(
        default=False,
        metadata={"help": "--model is a plain causal LM: score with a fresh random head (a chance-level baseline)"},
    )
    seed: int = field(default=42, metadata={"help": "seed of the --untrained-head draw"})


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("rm", help="train a reward model, and score responses with one")
    actions = parser.add_subparsers(dest="rm_command", metavar="ACTION", required=True)

    train = actions.add_parser(
        "train",
        help="train a reward model (the LM plus a scalar head) on preference pairs",
        description="Train --model with a reward head Linear(hidden, 1, bias=False) on the last real token of prompt "
        "+ response: loss = -log sigmoid(r_chosen - r_rejected - margin) + lm_weight * LM loss on the chosen "
        "response. A per-pair `margin` field is used when present. Writes OUTPUT_DIR/metrics.jsonl, plots/*.png, "
        "summary.json, run.json, checkpoints/step-N/ and the reward model in final/: with --lora the peft adapter and "
        "the head only (checkpoints too), else the whole model and the head; either reloads, head included, with "
        "`prefalign rm score --model OUTPUT_DIR`. Runs under `torchrun --nproc-per-node N` as is.",
    )
    train.add_argument("--config", help="YAML file of options (keys as the long options); the command line wins")
    add_config_args(train, RewardConfig)
    train.set_defaults(func=run_train)

    score = actions.add_parser(
        "score",
        help="write the reward of each response (and a pair file's accuracy)",
        description="Score --data with a reward model. For preference pairs: both rewards per pair, and the accuracy "
        "with a 95%% Wilson score interval (ties count half), printed and written to OUT.summary.json. For "
        "prompt/response rows: one reward each.",
    )
    add_config_args(score, RewardScoreOptions, require=True, from_file=False)
    score.set_defaults(func=run_score)


def run_train(args: argparse.Namespace) -> int:
    from ..train.loop import train
    from ..train.objectives.reward import RewardObjective
    from ..train.run_files import check_run

    config = config_from_args(RewardConfig, args)
    check_run(config)
    train(config, RewardObjective(config))
    return 0


def run_score(args: argparse.Namespace) -> int:
    options = build_config(RewardScoreOptions, overrides=vars(args))
    if options.batch_size < 1:
        raise PrefalignError(f"--batch-size must be at least 1, got {options.batch_size}")
    output = check_output_file(options.output)
    check_input(options.data, "--data", "file or directory")
    score = _score_pairs if _holds_pairs(options.data) else _score_responses  # reads one row: before the model
    from ..models.loading import check_model, load_tokenizer
    from ..models.reward import load_reward_model, load_reward_tokenizer, with_untrained_head

    if options.untrained_head:
        check_model(options.model)
        model = with_untrained_head(options.model, seed=options.seed, device=options.device)
        tokenizer = load_tokenizer(options.model)
    else:
        check_input(options.model, "--model", "directory")
        model = load_reward_model(options.model, device=options.device)
        tokenizer = load_reward_tokenizer(options.model)
    rows, summary = score(model, tokenizer, options)
    write_jsonl_atomic(output, rows)
    say(f"wrote {len(rows)} rows to {output}")
    if summary is not None:
        summary_path = output.with_name(output.name.removesuffix(".jsonl") + ".summary.json")
        summary |= {"model": options.model, "data": options.data, "untrained_head": options.untrained_head}
        write_json_atomic(summary_path, summary)
        ci = summary["accuracy_ci95"]
        print(
            f"accuracy {summary['accuracy']:.4f} (95% Wilson CI {ci[0]:.4f}-{ci[1]:.4f}) over {summary['pairs']} "
            f"pairs; mean margin {summary['mean_margin']:.4f}; summary in {summary_path}"
        )
    return 0


def _holds_pairs(source: str) -> bool:
    """Whether the first readable row is a preference pair (has `chosen`)."""
    from ..data.sources import open_source

    _, rows = open_source(source)
    for row in rows:
        if row.problem is None:
            return isinstance(row.value, dict) and "chosen" in row.value
    raise PrefalignError(f"{source}: no readable rows")


def _score_pairs(
    model: RewardModel, tokenizer: Any, options: RewardScoreOptions
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from ..data.loading import load_preferences
    from ..data.tokenize import tokenize_pair
    from ..evaluate.stats import wilson_interval
    from ..models.reward import score_token_rows

    config = options.tokenize
    data = load_preferences(options.data, options.data_format)
    kept, dropped = [], Counter[str]()
    for record in data.records:
        pair = tokenize_pair(record, tokenizer, config)
        if pair.dropped:
            dropped[str(pair.drop_reason)] += 1
        else:
            kept.append((record, pair))
    if not kept:
        raise PrefalignError(f"{options.data}: no pair left to score after tokenization ({dict(dropped)})")
    sequences = [(p.prompt_ids, p.chosen_ids) for _, p in kept] + [(p.prompt_ids, p.rejected_ids) for _, p in kept]
    rewards = score_token_rows(model, sequences, tokenizer.pad_token_id, options.batch_size, progress=True)
    n = len(kept)
    rows, points = [], 0.0
    for (record, _), chosen, rejected in zip(kept, rewards[:n], rewards[n:]):
        margin = preference_margin(chosen, rejected)
        point = preference_outcome(margin)
        points += point
        rows.append(
            {
                "location": record.location,
                "reward_chosen": chosen,
                "reward_rejected": rejected,
                "margin": margin,
                "correct": point,
                **record.extra,
            }
        )
    low, high = wilson_interval(points, n)  # type: ignore[arg-type]  # a tie adds half a success
    mean = sum(rewards) / len(rewards)
    summary = {
        "pairs": n,
        "accuracy": points / n,
        "accuracy_ci95": [low, high],
        "ci_method": "wilson (ties count half)",
        "ties": sum(1 for row in rows if row["correct"] == 0.5),
        "mean_margin": sum(row["margin"] for row in rows) / n,
        "reward_mean": mean,
        "reward_std": (sum((r - mean) ** 2 for r in rewards) / len(rewards)) ** 0.5,
        "records_rejected": data.report.rejected,
        "pairs_dropped": dict(dropped),
        "max_length": config.max_length,
        "max_prompt_length": config.max_prompt_length,
    }
    return rows, summary


def _score_responses(
    model: RewardModel, tokenizer: Any, options: RewardScoreOptions
) -> tuple[list[dict[str, Any]], None]:
    from ..data.tokenize import tokenize_sft
    from ..models.reward import score_token_rows
    from ..train.objectives.sft import read_sft_examples

    rows, sequences, scored = [], [], []
    for prompt, response, location in read_sft_examples(options.data, options.data_format):
        example = tokenize_sft(prompt, response, tokenizer, options.tokenize, location)
        row: dict[str, Any] = {"location": location}
        row |= {"messages": prompt} if response is None else {"prompt": prompt, "response": response}
        if example.dropped:
            row |= {"reward": None, "error": example.drop_reason}
        else:
            sequences.append((example.prompt_ids, example.completion_ids))
            scored.append(row)
        rows.append(row)
    rewards = score_token_rows(model, sequences, tokenizer.pad_token_id, options.batch_size, progress=True)
    for row, reward in zip(scored, rewards):
        row["reward"] = reward
    return rows, None
