"""The runs `trainers_vs_trl.py` times, each in its own process: prefalign's trainer, TRL's, and the agreement check
that scores TRL's first batch with prefalign. Settings are in `trainers_vs_trl.py`'s docstring."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

BATCH, MAX_LENGTH, MAX_PROMPT_LENGTH, BETA = 4, 256, 192, 0.1
UNTRUNCATED = 4096  # SFT and the reward model: no truncation on either side
LEARNING_RATE = {"full": 5e-6, "lora": 5e-5}
LORA = {"r": 16, "alpha": 32.0, "dropout": 0.05, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}
# How prefalign computes a step of 4 items within half of TRL's memory. Full fine-tuning (weights, gradients and
# AdamW's moments take most of the budget): one forward over the 4 items in one padding-free row, each layer's
# activations recomputed in backward, and the heap trimmed every 5 layers of it. LoRA: 4 forward/backward passes of one
# item each (gradient accumulation: the same exact mean over the 4), keeping every activation; DPO with LoRA, whose
# sequences are capped at 256 tokens, has room for 2 passes of 2 pairs (one pass of all 4 does not fit). The reward
# model with LoRA, whose pairs are not truncated, runs as full fine-tuning does: its peak with 4 passes of one was the
# heap's growth around its longest pair, above half of TRL's.
_RECOMPUTE = {"gradient_checkpointing": True, "trim_heap_every_layers": 5}
_KEEP_ALL = {"gradient_checkpointing": False, "trim_heap_every_layers": 0}
PREFALIGN_MEMORY = {
    ("full", "any"): {"batch_size": BATCH, "grad_accum": 1, **_RECOMPUTE},
    ("lora", "any"): {"batch_size": 1, "grad_accum": BATCH, **_KEEP_ALL},
    ("lora", "dpo"): {"batch_size": 2, "grad_accum": 2, **_KEEP_ALL},
    ("lora", "reward"): {"batch_size": BATCH, "grad_accum": 1, **_RECOMPUTE},
}


def prefalign_memory(trainer: str, mode: str) -> dict[str, Any]:
    """prefalign's batch and memory settings for `trainer` in `mode` (above)."""
    return PREFALIGN_MEMORY.get((mode, trainer), PREFALIGN_MEMORY[(mode, "any")])


def first_pairs(data: str, count: int) -> list[dict[str, Any]]:
    """The first `count` HH pairs as explicit-prompt records: prompt messages, chosen and rejected answers."""
    from prefalign.data.loading import load_preferences

    records = load_preferences(data, "hh").records[:count]
    return [{"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected} for r in records]


# ---------------------------------------------------------------------------------------------------------------------
# prefalign


def prefalign_setup(trainer: str) -> tuple[Any, Any, dict[str, Any]]:
    """(config class, objective class, the settings of this trainer) of `prefalign <trainer>`."""
    from prefalign.train import config as configs
    from prefalign.train.objectives import DPOObjective, SFTObjective
    from prefalign.train.objectives.reward import RewardObjective

    return {
        "sft": (configs.SFTConfig, SFTObjective, {"max_length": UNTRUNCATED, "max_prompt_length": UNTRUNCATED}),
        "reward": (configs.RewardConfig, RewardObjective, {"max_length": UNTRUNCATED, "lm_weight": 0.0}),
        "dpo": (
            configs.DPOConfig,
            DPOObjective,
            {"max_length": MAX_LENGTH, "max_prompt_length": MAX_PROMPT_LENGTH, "beta": BETA, "precompute_ref": True},
        ),
    }[trainer]


def item_tokens(trainer: str, item: Any) -> int:
    """Real tokens of one trained item: prompt + answer of each sequence."""
    if trainer == "sft":
        return len(item.prompt_ids) + len(item.completion_ids)
    pair = item.pair
    return 2 * len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)


def run_prefalign(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from prefalign.models.loading import load_tokenizer
    from prefalign.train.loop import train

    os.environ["PREFALIGN_HOME"] = str(workdir / "home")  # an empty cache: DPO's reference pass runs and is timed
    rows = first_pairs(args.data, args.pairs)
    if args.trainer == "sft":
        rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows]
    data = workdir / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config_class, objective_class, settings = prefalign_setup(args.trainer)
    lora = args.mode == "lora"
    config = config_class(
        model=args.model,
        data=str(data),
        output_dir=str(workdir / "run"),
        learning_rate=LEARNING_RATE[args.mode],
        logging_steps=1,
        save_steps=0,
        eval_steps=10**9,
        progress=False,
        plots=False,
        lora=lora,
        lora_rank=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        lora_target_modules=LORA["targets"] if lora else ["all-linear"],
        precision=args.precision,
        **settings,
        **prefalign_memory(args.trainer, args.mode),
    )
    objective = objective_class(config)
    result = train(config, objective)
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["split"] == "train"]
    items, _ = objective_class(config).load(str(data), load_tokenizer(args.model))
    sizes = [min(BATCH, len(items) - BATCH * i) for i in range(len(steps))]  # items per optimizer step
    rate = f"{objective.unit}_per_second"
    seconds = sum(size / r[rate] for size, r in zip(sizes, steps)) + getattr(objective, "precompute_seconds", 0.0)
    tokens = sum(item_tokens(args.trainer, item) for item in items)
    return {"items": len(items), "seconds": seconds, "tokens": tokens, "first_loss": steps[0]["loss"]}


# ---------------------------------------------------------------------------------------------------------------------
# TRL


def trl_rows(trainer: str, pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pairs as TRL's conversational datasets with an explicit prompt."""
    if trainer == "sft":
        return [{"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["chosen"]}]} for r in pairs]
    return [
        {
            "prompt": r["prompt"],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in pairs
    ]


def trl_trainer(trainer: str, mode: str, output_dir: Path, precision: str) -> tuple[Any, Any, Any, Any]:
    """(trainer class, its config, model class, peft config or None) for TRL's trainer of `trainer`."""
    import trl
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    common = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": BATCH,
        "learning_rate": LEARNING_RATE[mode],
        "num_train_epochs": 1,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 42,
        "bf16": precision == "bf16",  # TRL defaults to bf16 autocast, even on CPU: set either way
    }
    trainer_class, config, model_class, task = {
        "sft": (trl.SFTTrainer, trl.SFTConfig(max_length=None, padding_free=True, **common), None, "CAUSAL_LM"),
        "reward": (trl.RewardTrainer, trl.RewardConfig(max_length=None, **common), None, "SEQ_CLS"),
        "dpo": (trl.DPOTrainer, trl.DPOConfig(max_length=MAX_LENGTH, beta=BETA, **common), None, "CAUSAL_LM"),
    }[trainer]
    model_class = AutoModelForSequenceClassification if trainer == "reward" else AutoModelForCausalLM
    peft_config = None
    if mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules=LORA["targets"],
            task_type=task,
        )
    return trainer_class, config, model_class, peft_config


def batch_counts(trainer: str, inputs: dict[str, Any]) -> tuple[int, int]:
    """(items, real tokens) of one TRL batch."""
    if trainer == "sft":  # padding-free: one row of real tokens, each example starting at position 0
        return int((inputs["position_ids"] == 0).sum()), int(inputs["input_ids"].numel())
    return inputs["input_ids"].shape[0] // 2, int(inputs["attention_mask"].sum())


def run_trl(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback

    trainer_class, config, model_class, peft_config = trl_trainer(
        args.trainer, args.mode, workdir / "trl", args.precision
    )
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    extra = {"num_labels": 1} if args.trainer == "reward" else {}
    model = model_class.from_pretrained(args.model, dtype=torch.float32, **extra)
    timing = {"seconds": 0.0, "tokens": 0, "items": 0, "check_seconds": 0.0}
    check: dict[str, Any] = {}

    class Timed(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            timing["started"] = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            timing["seconds"] += time.perf_counter() - timing.pop("started")

    class Recording(trainer_class):  # type: ignore[misc, valid-type]  # TRL's trainer class of --trainer
        """TRL's trainer, counting real tokens and keeping what the agreement check needs of its first batch (the
        extra work is timed and taken off the step time)."""

        def compute_loss(self, model: Any, inputs: dict[str, Any], *rest: Any, **kwargs: Any) -> Any:
            if model.training and torch.is_grad_enabled():
                items, tokens = batch_counts(args.trainer, inputs)
                timing["items"] += items
                timing["tokens"] += tokens
                if not check:
                    started = time.perf_counter()
                    check.update(FIRST_BATCH[args.trainer](model, inputs))
                    timing["check_seconds"] += time.perf_counter() - started
            return super().compute_loss(model, inputs, *rest, **kwargs)

    trainer = Recording(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(trl_rows(args.trainer, first_pairs(args.data, args.pairs))),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Timed()],
    )
    trainer.train()
    first_loss = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    seconds = timing["seconds"] - timing["check_seconds"]
    return {
        "items": timing["items"],
        "seconds": seconds,
        "tokens": timing["tokens"],
        "first_loss": first_loss,
        "check": check,
    }


def sft_first_batch(model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """TRL's padding-free row as (prompt, completion) token ids per example: the labelled tokens are the completion."""
    ids, labels = inputs["input_ids"][0].tolist(), inputs["labels"][0].tolist()
    starts = [*(inputs["position_ids"][0] == 0).nonzero().flatten().tolist(), len(ids)]
    examples = []
    for start, end in itertools.pairwise(starts):
        first = next(t for t in range(start, end) if labels[t] != -100)
        assert all(label != -100 for label in labels[first:end]), "TRL labels a token inside the prompt"
        examples.append([ids[start:first], ids[first:end]])
    return {"examples": examples}


def reward_first_batch(model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """TRL's rows (chosen ones, then rejected ones), its rewards of them, and its reward head as it starts."""
    import torch

    with torch.no_grad():
        rewards = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.squeeze(-1)
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
    head = next(p for name, p in model.named_parameters() if "score" in name and name.endswith("weight"))
    return {"rows": rows, "rewards": rewards.tolist(), "head": head.detach()[0].tolist()}


def dpo_first_batch(model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """TRL's token ids of a batch as (prompt, chosen, rejected) triples, and TRL's per-sequence log-probs of them."""
    import torch

    mask, completion = inputs["attention_mask"].bool(), inputs["completion_mask"].bool()
    labels = inputs["input_ids"].masked_fill(~completion, -100)
    kwargs = {k: v for k, v in inputs.items() if k not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")}
    with torch.no_grad():
        out = model(**kwargs, labels=labels, fused_lm_head=True, use_cache=False)
    logps = out.log_probs[:, -(labels.shape[1] - 1) :].sum(1).tolist()
    rows = [(ids[m & ~c].tolist(), ids[c].tolist()) for ids, m, c in zip(inputs["input_ids"], mask, completion)]
    half = len(rows) // 2
    triples = []
    for (prompt, chosen), (other_prompt, rejected) in zip(rows[:half], rows[half:]):
        assert prompt == other_prompt, "TRL's chosen and rejected rows carry different prompts"
        triples.append([prompt, chosen, rejected])
    return {"pairs": triples, "logps": logps}


FIRST_BATCH = {"sft": sft_first_batch, "reward": reward_first_batch, "dpo": dpo_first_batch}


# ---------------------------------------------------------------------------------------------------------------------
# The agreement check: prefalign on TRL's first batch, from the initial model (as TRL's first step sees it)


def initial_model(args: argparse.Namespace) -> Any:
    import torch

    from prefalign.models.loading import load_model
    from prefalign.models.lora import apply_lora

    model = load_model(args.model, dtype=torch.float32, device="cpu")
    if args.mode == "lora":
        model = apply_lora(
            model, rank=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"], target_modules=LORA["targets"]
        )
    return model.eval()


def split_pair(chosen: list[int], rejected: list[int]) -> list[list[int]]:
    """Two full sequences as [shared prefix, chosen rest, rejected rest], each rest non-empty. The shared prefix may
    reach into the answers: the rewards, read at each sequence's last token, are the same."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return [chosen[:shared], chosen[shared:], rejected[shared:]]


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from prefalign.data.packing import collate_sft_row
    from prefalign.data.shared_prefix import collate_pair_row
    from prefalign.data.tokenize import SFTExample, TokenizedPair
    from prefalign.models.reward import RewardModel
    from prefalign.scoring.run import score_completions

    trl = json.loads(Path(args.check).read_text())
    model = initial_model(args)
    with torch.no_grad():
        if args.trainer == "sft":
            _, logps = score_completions(model, collate_sft_row([SFTExample(*e) for e in trl["examples"]]))
            return {"loss": float(-logps.sum_logps.sum() / logps.num_tokens.sum())}
        if args.trainer == "reward":
            half = len(trl["rows"]) // 2
            pairs = [TokenizedPair(*split_pair(c, r)) for c, r in zip(trl["rows"][:half], trl["rows"][half:])]
            head = torch.nn.Linear(len(trl["head"]), 1, bias=False)
            head.weight.data[0] = torch.tensor(trl["head"])
            batch = collate_pair_row(pairs)
            rewards = RewardModel(model, args.model, head)(**batch.model_inputs(), reward_positions=batch.sequence_ends)
            ours = rewards.rewards
            loss = -torch.nn.functional.logsigmoid(ours[:half] - ours[half:]).mean()
            diff = max(abs(a - b) for a, b in zip(ours.tolist(), trl["rewards"]))
            return {"loss": float(loss), "what": "rewards", "max_abs_diff": diff}
        _, logps = score_completions(model, collate_pair_row([TokenizedPair(*triple) for triple in trl["pairs"]]))
    ours = logps.sum_logps.tolist()
    return {"what": "log-probs", "max_abs_diff": max(abs(a - b) for a, b in zip(ours, trl["logps"]))}
