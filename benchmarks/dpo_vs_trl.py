"""prefalign's DPO step against TRL's DPOTrainer: same model, data and settings, on this machine.

    pip install -e '.[bench]'        # TRL; this script installs nothing
    python benchmarks/dpo_vs_trl.py --pairs 64 --repeats 3 --modes full lora

Both train SmolLM2-135M-Instruct for one epoch on the first N pairs of HH-RLHF harmless-base test (explicit prompt:
the conversation so far as messages, then the two answers), batch 4 pairs, max length 256, beta 0.1, fp32; TRL at its
defaults otherwise (gradient checkpointing on, fused AdamW), except bf16 off: TRL turns bf16 autocast on by default,
on CPU too. prefalign runs with its options `--gradient-checkpointing` (as TRL) and `--precompute-ref` (the reference
log-probs come from one no-grad pass of the policy before its first update, so no reference copy is held; that pass is
timed and counted in prefalign's time, as TRL's per-step reference forwards are in TRL's). Both take exact steps:
global-norm clipping at 1.0, no approximation. Each run is a fresh subprocess (with an empty prefalign cache, so the
reference pass really runs), so its peak RSS (VmHWM) is its own, and the two frameworks alternate within each repeat
so that a busy machine slows both alike.

Timing counts optimizer steps only (not model loading or tokenization), plus prefalign's reference pass. "Real tokens"
counts what a two-sequence implementation processes without padding: prompt + chosen and prompt + rejected of every
trained pair, for both.

Before timing, the first run of each mode checks that the two agree: first-step losses (both ln 2, the policy still
equal to its reference) and the per-sequence log-probabilities of TRL's first batch, which prefalign scores from TRL's
own token ids (the two tokenize the chat template's end of turn differently) within 1e-3.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
BATCH_PAIRS, MAX_LENGTH, MAX_PROMPT_LENGTH, BETA = 4, 256, 192, 0.1
LEARNING_RATE = {"full": 5e-6, "lora": 5e-5}
LORA = {"r": 16, "alpha": 32.0, "dropout": 0.05, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}
AGREEMENT = 1e-3
# How prefalign computes a step of 4 pairs within half of TRL's memory. Full fine-tuning (weights, gradients and
# AdamW's moments take most of the budget): one forward over the 4 pairs in one padding-free row, each layer's
# activations recomputed in backward, and the heap trimmed every 5 layers of it. LoRA: 4 forward/backward passes of one
# pair each (gradient accumulation: the same exact mean over the 4 pairs), keeping every activation.
PREFALIGN_MEMORY = {
    "full": {"batch_size": BATCH_PAIRS, "grad_accum": 1, "gradient_checkpointing": True, "trim_heap_every_layers": 5},
    "lora": {"batch_size": 1, "grad_accum": BATCH_PAIRS, "gradient_checkpointing": False, "trim_heap_every_layers": 0},
}


def default_model() -> str:
    from prefalign.models.registry import models_root

    return str(models_root() / "smollm2-135m-instruct")


def peak_rss_gib() -> float:
    """This process's high-water resident set size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM in /proc/self/status")


def first_pairs(data: str, count: int) -> list[dict[str, Any]]:
    """The first `count` HH pairs as explicit-prompt records: prompt messages, chosen and rejected answers."""
    from prefalign.data.loading import load_preferences

    records = load_preferences(data, "hh").records[:count]
    return [{"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected} for r in records]


# ---------------------------------------------------------------------------------------------------------------------
# Workers: each runs in its own process and prints one JSON line.


def run_prefalign(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from prefalign.models.loading import load_tokenizer
    from prefalign.train.config import DPOConfig
    from prefalign.train.loop import train
    from prefalign.train.objectives import DPOObjective

    os.environ["PREFALIGN_HOME"] = str(workdir / "home")  # an empty cache: the reference pass runs and is timed
    data = workdir / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in first_pairs(args.data, args.pairs)))
    lora = args.mode == "lora"
    config = DPOConfig(
        model=args.model,
        data=str(data),
        output_dir=str(workdir / "run"),
        max_length=MAX_LENGTH,
        max_prompt_length=MAX_PROMPT_LENGTH,
        beta=BETA,
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
        precompute_ref=True,
        **PREFALIGN_MEMORY[args.mode],
    )
    objective = DPOObjective(config)
    result = train(config, objective)
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["split"] == "train"]
    items, _ = DPOObjective(config).load(str(data), load_tokenizer(args.model))
    sizes = [min(BATCH_PAIRS, len(items) - BATCH_PAIRS * i) for i in range(len(steps))]  # pairs per optimizer step
    seconds = sum(size / r["pairs_per_second"] for size, r in zip(sizes, steps)) + objective.precompute_seconds
    tokens = sum(2 * len(i.pair.prompt_ids) + len(i.pair.chosen_ids) + len(i.pair.rejected_ids) for i in items)
    return {"pairs": len(items), "seconds": seconds, "tokens": tokens, "first_loss": steps[0]["loss"]}


def run_trl(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    rows = [
        {
            "prompt": r["prompt"],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in first_pairs(args.data, args.pairs)
    ]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    peft_config = None
    if args.mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules=LORA["targets"],
            task_type="CAUSAL_LM",
        )
    timing = {"seconds": 0.0, "tokens": 0, "pairs": 0, "check_seconds": 0.0}
    check: dict[str, Any] = {}

    class Timed(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            timing["started"] = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            timing["seconds"] += time.perf_counter() - timing.pop("started")

    class Recording(DPOTrainer):
        """TRL's trainer, counting real tokens and keeping its own log-probs of the first batch (computed exactly as
        its loss computes them; the extra forward is timed and taken off the step time)."""

        def compute_loss(self, model: Any, inputs: dict[str, Any], *rest: Any, **kwargs: Any) -> Any:
            if model.training and torch.is_grad_enabled():
                timing["tokens"] += int(inputs["attention_mask"].sum())
                timing["pairs"] += inputs["input_ids"].shape[0] // 2
                if not check:
                    started = time.perf_counter()
                    check.update(trl_first_batch(model, inputs))
                    timing["check_seconds"] += time.perf_counter() - started
            return super().compute_loss(model, inputs, *rest, **kwargs)

    config = DPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=BATCH_PAIRS,
        max_length=MAX_LENGTH,
        beta=BETA,
        learning_rate=LEARNING_RATE[args.mode],
        num_train_epochs=1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=42,
        bf16=False,
    )  # TRL defaults to bf16 autocast, even on CPU; compare in fp32
    trainer = Recording(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Timed()],
    )
    trainer.train()
    first_loss = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    return {
        "pairs": timing["pairs"],
        "seconds": timing["seconds"] - timing["check_seconds"],
        "tokens": timing["tokens"],
        "first_loss": first_loss,
        "check": check,
    }


def trl_first_batch(model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
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


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    """prefalign's per-sequence log-probs of TRL's first batch, from the initial model (as TRL's first step sees it)."""
    import torch

    from prefalign.data.shared_prefix import collate_shared_prefix
    from prefalign.data.tokenize import TokenizedPair
    from prefalign.models.loading import load_model
    from prefalign.models.lora import apply_lora
    from prefalign.scoring.run import score_completions

    trl = json.loads(Path(args.check).read_text())
    model = load_model(args.model, dtype=torch.float32, device="cpu")
    if args.mode == "lora":
        model = apply_lora(
            model, rank=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"], target_modules=LORA["targets"]
        )
    model.eval()
    batch = collate_shared_prefix([TokenizedPair(*triple) for triple in trl["pairs"]], pad_id=0)
    with torch.no_grad():
        _, logps = score_completions(model, batch)
    ours = logps.sum_logps.tolist()
    return {"prefalign": ours, "trl": trl["logps"], "max_abs_diff": max(abs(a - b) for a, b in zip(ours, trl["logps"]))}


def worker(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if args.worker == "check":
            result = run_check(args)
        else:
            result = (run_trl if args.worker == "trl" else run_prefalign)(args, Path(tmp))
    result["peak_rss_gib"] = peak_rss_gib()
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# The driver


def spawn(args: argparse.Namespace, role: str, mode: str, check: Path | None = None) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        role,
        "--mode",
        mode,
        "--pairs",
        str(args.pairs),
        "--model",
        args.model,
        "--data",
        args.data,
    ]
    if check is not None:
        command += ["--check", str(check)]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{role} ({mode}) failed with exit code {done.returncode}:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def agree(args: argparse.Namespace, mode: str, trl: dict[str, Any], ours: dict[str, Any], tmp: Path) -> None:
    dump = tmp / f"trl-first-batch-{mode}.json"
    dump.write_text(json.dumps(trl["check"]))
    check = spawn(args, "check", mode, dump)
    losses = abs(trl["first_loss"] - ours["first_loss"])
    print(
        f"[{mode}] first-step loss: TRL {trl['first_loss']:.6f}, prefalign {ours['first_loss']:.6f} "
        f"(|diff| {losses:.2e}; ln 2 = {math.log(2):.6f})"
    )
    print(
        f"[{mode}] per-sequence log-probs of TRL's first batch ({len(check['trl'])} sequences, TRL's token ids): "
        f"max |diff| {check['max_abs_diff']:.2e}"
    )
    if losses > AGREEMENT or check["max_abs_diff"] > AGREEMENT:
        sys.exit(f"[{mode}] TRL and prefalign disagree beyond {AGREEMENT}: stopping before timing")


def rates(run: dict[str, Any]) -> dict[str, float]:
    return {
        "pairs/s": run["pairs"] / run["seconds"],
        "tokens/s": run["tokens"] / run["seconds"],
        "peak RSS GiB": run["peak_rss_gib"],
    }


def report(mode: str, runs: dict[str, list[dict[str, Any]]]) -> None:
    medians = {
        name: {key: statistics.median(rates(r)[key] for r in rs) for key in ("pairs/s", "tokens/s", "peak RSS GiB")}
        for name, rs in runs.items()
    }
    trl, ours = medians["trl"], medians["prefalign"]
    print(
        f"\n{mode}: medians of {len(runs['trl'])} run(s), {runs['trl'][0]['pairs']} pairs (TRL) / "
        f"{runs['prefalign'][0]['pairs']} pairs (prefalign)"
    )
    print(f"  {'':10} {'pairs/s':>9} {'tokens/s':>9} {'peak RSS GiB':>13}")
    for name, row in (("TRL", trl), ("prefalign", ours)):
        print(f"  {name:10} {row['pairs/s']:9.3f} {row['tokens/s']:9.1f} {row['peak RSS GiB']:13.2f}")
    print(
        f"  {'ratio':10} {ours['pairs/s'] / trl['pairs/s']:8.2f}x {ours['tokens/s'] / trl['tokens/s']:8.2f}x "
        f"{ours['peak RSS GiB'] / trl['peak RSS GiB']:12.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=64, help="first N pairs of the data (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each framework per mode (default 3)")
    parser.add_argument("--modes", nargs="+", choices=["full", "lora"], default=["full", "lora"])
    parser.add_argument("--model", default=None, help="HF model directory (default: the pulled SmolLM2-135M)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="HH-RLHF jsonl(.gz) file")
    parser.add_argument("--worker", choices=["trl", "prefalign", "check"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["full", "lora"], help=argparse.SUPPRESS)
    parser.add_argument("--check", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.model = args.model or default_model()
    if args.worker:
        worker(args)
        return
    try:
        import trl  # noqa: F401  (imported only to check that TRL is installed)
    except ImportError:
        sys.exit("TRL is not installed: pip install -e '.[bench]'")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            runs: dict[str, list[dict[str, Any]]] = {"trl": [], "prefalign": []}
            for repeat in range(args.repeats):
                order = ("trl", "prefalign") if repeat % 2 == 0 else ("prefalign", "trl")
                for name in order:
                    runs[name].append(spawn(args, name, mode))
                    rate = rates(runs[name][-1])
                    print(
                        f"[{mode}] run {repeat + 1} {name}: {rate['pairs/s']:.3f} pairs/s, "
                        f"{rate['tokens/s']:.1f} tokens/s, peak {rate['peak RSS GiB']:.2f} GiB",
                        flush=True,
                    )
                if repeat == 0:
                    agree(args, mode, runs["trl"][0], runs["prefalign"][0], Path(tmp))
            report(mode, runs)


if __name__ == "__main__":
    main()
