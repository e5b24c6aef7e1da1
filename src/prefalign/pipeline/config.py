"""The demo's settings: one dataclass, loadable from YAML (`prefalign demo --config my.yaml`), overridable per option.

The defaults are the embedded workflow sized for a 2-core CPU (the README's measured run gives its stage times);
`--quick` swaps in `QUICK`, a smaller version of every stage for CI, before the YAML file and the command line apply.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from ..errors import PrefalignError
from ..generate import GENERATION_DTYPES, GenerationConfig, GenerationDtype
from ..models.loading import default_device
from ..pairs.build import PairsConfig
from ..scoring.preference import is_reference_free, parse_loss_mixture
from ..train.config import DPOConfig, Precision, RewardConfig, SFTConfig, TrainConfig
from ..train.trackers import check_report_to


def _help(text: str) -> dict[str, str]:
    return {"help": text}


TrainingStage = Literal["sft", "reward", "dpo"]
ALL: tuple[TrainingStage, ...] = ("sft", "reward", "dpo")


def _trains(stages: tuple[TrainingStage, ...], text: str, train_field: str | None = None) -> dict[str, Any]:
    """An option that sets the training config field `train_field` (default: the option's own name) of `stages`."""
    return {"help": text, "stages": stages, "train_field": train_field}


# Training settings the demo fixes rather than offers: every stage is a resumable LoRA run keeping one checkpoint;
# its heap is not trimmed after each step (a LoRA run of the embedded model has memory to spare, and every page a trim
# hands back is faulted in again by the next step: half the training stages' page faults and system time)...
_TRAINING_FIXED: dict[str, Any] = {
    "lora": True,
    "keep_checkpoints": 1,
    "resume": True,
    "progress": True,
    "logging_steps": 2,
    "release_memory": False,
}
# ...and each stage's own: SFT has no held-out data to validate on (so a step count it never reaches), the reward
# model and DPO validate before, halfway and after, the reward model learns from the pairwise loss alone, DPO caches
# its reference log-probs; SFT and DPO save merged models for the next stages to load.
_STAGE_FIXED: dict[TrainingStage, dict[str, Any]] = {
    "sft": {"merge": True, "eval_steps": 1000},
    "reward": {"eval_steps": 0.5, "lm_weight": 0.0},
    "dpo": {"merge": True, "eval_steps": 0.5, "precompute_ref": True},
}
_TRAINING_CLASSES: dict[TrainingStage, type[TrainConfig]] = {"sft": SFTConfig, "reward": RewardConfig, "dpo": DPOConfig}


@dataclass
class DemoConfig:
    output_dir: str = field(default="runs/demo", metadata=_help("where every stage writes its directory"))
    model: str = field(default="smollm2-135m-instruct", metadata=_help("base model: registry name or HF directory"))
    quick: bool = field(default=False, metadata=_help("the small version of every stage (CI; a few minutes)"))
    seed: int = field(default=0, metadata=_trains(ALL, "seed of sampling, data splits and training"))

    # Prompts: a prompts file (JSONL with `prompt`, optional `id`, `instruction_id_list`, `kwargs`) or builtin[:split].
    train_prompts: str = field(default="builtin:train", metadata=_help("prompts for SFT sampling and pair building"))
    eval_prompts: str = field(
        default="builtin:heldout",
        metadata=_help("held-out prompts of the final evaluation; `heldout-pairs`: the prompts of the held-out pairs"),
    )
    eval_limit: int = field(default=240, metadata=_help("evaluate on the first N held-out prompts"))

    # Generation: the evaluation's answers, and the samples of the SFT data and the pairs.
    max_new_tokens: int = field(default=128, metadata=_help("most new tokens of an answer in the evaluation"))
    sampling_max_new_tokens: int = field(
        default=96,
        metadata=_help(
            "most new tokens of a sample for SFT data and pairs (no built-in instruction needs more: at most 40 words, "
            "4 bullets or 3 paragraphs); a sample cut there is kept only trimmed to its last complete sentence"
        ),
    )
    generation_batch_size: int = field(default=128, metadata=_help("prompts decoded together"))
    sampling_dtype: GenerationDtype = field(
        default="auto",
        metadata=_help(
            "precision of the SFT and pair sampling: auto (bfloat16 where the device computes it faster than fp32), "
            "model, float32 or bfloat16; the trainers score pairs and the evaluation generates in the model's own dtype"
        ),
    )

    # SFT: rejection sampling from the base model (unless sft_data is given), then LoRA SFT.
    sft_data: str | None = field(
        default=None, metadata=_help("your SFT data (prompt/completion, messages or preference records: chosen)")
    )
    sft_prompts: int = field(default=240, metadata=_help("train prompts the base model samples for SFT"))
    sft_samples: int = field(default=3, metadata=_help("samples per prompt; the first that passes every check is kept"))
    sft_temperature: float = field(default=0.7, metadata=_help("temperature of the SFT samples"))
    sft_rewrites: bool = field(
        default=True,
        metadata=_help(
            "a prompt none of whose samples passed keeps a sample that an edit makes pass every check (letter case, "
            "quotes, commas, end phrase, postscript, title; a sample cut at the token limit is first trimmed back to "
            "its last complete sentence), marked source rewrite:..."
        ),
    )
    sft_epochs: int = field(default=3, metadata=_trains(("sft",), "SFT epochs", "epochs"))
    sft_learning_rate: float = field(
        default=1e-3, metadata=_trains(("sft",), "SFT learning rate (LoRA)", "learning_rate")
    )

    # Preference pairs: sampled from the SFT model and judged (unless preference_data is given).
    preference_data: str | None = field(
        default=None, metadata=_help("your preference pairs (any format `prefalign data` reads); skips building")
    )
    data_limit: int | None = field(
        default=None, metadata=_help("use only the first N records of sft_data and preference_data")
    )
    judge: str = field(default="verifier", metadata=_help("judge that picks the better of two samples"))
    pair_prompts: int = field(default=440, metadata=_help("train prompts to build pairs from"))
    pair_samples: int = field(default=2, metadata=_help("samples per prompt; with more than 2, best vs worst"))
    pair_temperatures: list[float] = field(
        default_factory=lambda: [0.7, 1.2], metadata=_help("sampling temperatures, cycled over the samples")
    )
    min_score_gap: float = field(
        default=0.0,
        metadata=_help("skip (and count) pairs whose chosen and rejected judge scores differ by less than this"),
    )
    max_repetition: float = field(
        default=0.25,
        metadata=_help(
            "an SFT target or a pair's chosen response may repeat at most this share of its word 4-grams (the "
            "evaluation's repetition measure): a loop that passes the checks is not taught; 1: no limit"
        ),
    )
    rewrite_pairs: bool = field(
        default=True,
        metadata=_help(
            "also make per prompt a rewrite pair: a sample edited to follow the instructions it fails (letter case, "
            "quotes, commas, end phrase, postscript, title; a sample cut at the token limit trimmed back to a "
            "complete sentence first) chosen over the sample as it was; the report counts them"
        ),
    )
    contrast_pairs: bool = field(
        default=True,
        metadata=_help(
            "with --rewrite-pairs: per rewrite pair that changed the whole answer (letter case, quotes, commas), also "
            "a contrast pair: another prompt's sample as it was, chosen over the same sample with that edit, which "
            "its prompt did not ask for (rewrite pairs alone teach the edit everywhere); the report counts them"
        ),
    )
    mirror_pairs: bool = field(
        default=False,
        metadata=_help(
            "with --contrast-pairs: per contrast pair, also its mirror: the same two answers under the same prompt "
            "with the edit's instruction added, the edited answer chosen, so that the instruction alone decides "
            "between the two (off: it taught the case instructions and lost as much elsewhere, README)"
        ),
    )
    heldout_fraction: float = field(
        default=0.35, metadata=_help("fraction of the pair prompts held out (validation, held-out accuracy)")
    )

    # Training (reward model and DPO; the SFT above shares the lengths and LoRA settings).
    max_length: int = field(default=320, metadata=_trains(ALL, "most tokens of prompt + response in training"))
    max_prompt_length: int = field(default=160, metadata=_trains(ALL, "most prompt tokens in training"))
    train_batch_size: int = field(
        default=8, metadata=_trains(ALL, "examples (or pairs) per optimizer step", "batch_size")
    )
    save_steps: int = field(
        default=10, metadata=_trains(ALL, "checkpoint every N steps: a killed stage resumes from there")
    )
    lora_rank: int = field(default=16, metadata=_trains(ALL, "LoRA rank of the SFT, reward-model and DPO adapters"))
    train_precision: Precision = field(
        default="auto",
        metadata=_trains(
            ALL,
            "matmul precision of the training stages: bf16 (autocast; fp32 weights, optimizer state and losses), "
            "fp32, or auto (bf16 where the device computes it faster than fp32, as --sampling-dtype auto)",
            "precision",
        ),
    )
    lora_layers: int | None = field(
        default=15,
        metadata=_trains(
            ("sft", "dpo"), "SFT and DPO adapt only the last N blocks (faster backward); none: every block"
        ),
    )
    rm_lora_layers: int | None = field(
        default=10, metadata=_trains(("reward",), "the same for the reward model", "lora_layers")
    )
    rm_epochs: int = field(default=1, metadata=_trains(("reward",), "reward-model epochs", "epochs"))
    rm_learning_rate: float = field(
        default=1e-3, metadata=_trains(("reward",), "reward-model learning rate (LoRA and head)", "learning_rate")
    )
    beta: float = field(default=0.1, metadata=_trains(("dpo",), "DPO beta"))
    dpo_loss: str = field(
        default="sigmoid,sft:0.5",
        metadata=_trains(
            ("dpo",),
            "the dpo stage's preference method or mixture, e.g. sigmoid,sft:0.5 (see prefalign dpo --help)",
            "loss",
        ),
    )
    dpo_epochs: int = field(default=2, metadata=_trains(("dpo",), "DPO epochs", "epochs"))
    dpo_learning_rate: float = field(
        default=5e-4, metadata=_trains(("dpo",), "DPO learning rate (LoRA)", "learning_rate")
    )
    rounds: int = field(
        default=1,
        metadata=_help(
            "DPO rounds (iterative DPO): each round after the first samples and judges pairs from the previous "
            "round's DPO model on the next --pair-prompts train prompts, and trains that model again with itself "
            "as the reference; the evaluation's dpo model is the last round's"
        ),
    )

    # Evaluation.
    eval_judges: list[str] = field(
        default_factory=list, metadata=_help("judges besides the verifier and the trained reward model")
    )
    kl_samples: int = field(default=1, metadata=_help("samples per prompt for the KL-from-base estimate"))
    kl_max_new_tokens: int = field(
        default=32, metadata=_help("token budget of the KL samples: the KL covers the first N response tokens")
    )
    kl_prompts: int = field(
        default=80, metadata=_help("estimate the KL on the first N evaluation prompts (a model pass each)")
    )
    eval_dtype: GenerationDtype = field(
        default="auto",
        metadata=_help(
            "precision of the evaluation's answers and KL samples, the same for every model: auto (bfloat16 where "
            "the device computes it faster than fp32), model, float32 or bfloat16"
        ),
    )

    # Experiment trackers, for every training stage (each stage's run is named <output dir's name>-<stage>).
    report_to: list[str] = field(
        default_factory=lambda: ["none"],
        metadata=_trains(
            ALL, "experiment trackers of the training stages: tensorboard, wandb, trackio, mlflow, or none (default)"
        ),
    )
    project: str = field(default="prefalign", metadata=_trains(ALL, "the W&B / Trackio project or MLflow experiment"))

    def __post_init__(self) -> None:
        for name in (
            "eval_limit",
            "max_new_tokens",
            "sampling_max_new_tokens",
            "generation_batch_size",
            "sft_prompts",
            "sft_samples",
            "sft_epochs",
            "pair_prompts",
            "max_length",
            "max_prompt_length",
            "train_batch_size",
            "save_steps",
            "lora_rank",
            "rm_epochs",
            "dpo_epochs",
            "rounds",
            "kl_max_new_tokens",
            "kl_prompts",
        ):
            if getattr(self, name) < 1:
                raise PrefalignError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.data_limit is not None and self.data_limit < 1:
            raise PrefalignError(f"--data-limit must be at least 1, got {self.data_limit}")
        for name in ("lora_layers", "rm_lora_layers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise PrefalignError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.pair_samples < 2:
            raise PrefalignError(
                f"--pair-samples must be at least 2 (a pair needs two answers), got {self.pair_samples}"
            )
        if not (math.isfinite(self.min_score_gap) and self.min_score_gap >= 0):
            raise PrefalignError(f"--min-score-gap must be a number of at least 0, got {self.min_score_gap}")
        if not 0 < self.max_repetition <= 1:
            raise PrefalignError(f"--max-repetition must be in (0, 1], got {self.max_repetition}")
        if not 0 < self.heldout_fraction < 1:
            raise PrefalignError(f"--heldout-fraction must be between 0 and 1, got {self.heldout_fraction}")
        if self.max_prompt_length >= self.max_length:
            raise PrefalignError("--max-prompt-length must be below --max-length: the response needs room")
        for name in ("sft_temperature", "beta", "sft_learning_rate", "rm_learning_rate", "dpo_learning_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise PrefalignError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
        try:
            parse_loss_mixture(self.dpo_loss)
        except ValueError as exc:
            raise PrefalignError(f"--dpo-loss: {exc}") from None
        if self.train_precision not in get_args(Precision):
            raise PrefalignError(
                f"--train-precision must be one of {', '.join(get_args(Precision))}, got {self.train_precision!r}"
            )
        for name in ("sampling_dtype", "eval_dtype"):
            if getattr(self, name) not in GENERATION_DTYPES:
                raise PrefalignError(
                    f"--{name.replace('_', '-')} must be one of {', '.join(GENERATION_DTYPES)}, "
                    f"got {getattr(self, name)!r}"
                )
        check_report_to(self.report_to)  # before the first stage, not when training starts

    def training_config(
        self,
        stage: TrainingStage,
        *,
        model: str,
        data: str | Path,
        output_dir: str | Path,
        name: str | None = None,
        **inputs: Any,
    ) -> TrainConfig:
        """The training config of `stage`: the demo options that set it (see `_trains`), the settings the demo fixes,
        and the given model, data and output directory (and e.g. `eval_data`); `name`: the stage's own name when
        it is not `stage` (a later DPO round's, dpo_2...), which its tracker run is called after."""
        options = {
            f.metadata["train_field"] or f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if stage in f.metadata.get("stages", ())
        }
        # The trainers' own auto keeps a CPU in fp32; the demo's takes bf16 wherever it measures faster.
        if options["precision"] == "auto":
            from ..models.precision import fast_bf16  # here: `prefalign --help` imports no torch

            options["precision"] = "bf16" if fast_bf16(default_device()) else "fp32"
        return _TRAINING_CLASSES[stage](
            **_TRAINING_FIXED,
            **self._stage_fixed(stage),
            **options,
            lora_alpha=2.0 * self.lora_rank,  # LoRA's update scale alpha / r stays 2 at any rank
            run_name=f"{Path(self.output_dir).name}-{name or stage}",  # the stages' runs told apart in a tracker
            model=model,
            data=str(data),
            output_dir=str(output_dir),
            **{name: str(value) for name, value in inputs.items()},
        )

    def _stage_fixed(self, stage: TrainingStage) -> dict[str, Any]:
        fixed = dict(_STAGE_FIXED[stage])
        if stage == "dpo" and is_reference_free(parse_loss_mixture(self.dpo_loss)):
            del fixed["precompute_ref"]  # no reference, nothing to precompute
        return fixed

    def sft_sampling(self) -> GenerationConfig:
        """How the base model samples its SFT candidates."""
        return GenerationConfig(
            temperature=self.sft_temperature,
            top_p=0.95,
            seed=self.seed,
            max_new_tokens=self.sampling_max_new_tokens,
            batch_size=self.generation_batch_size,
            dtype=self.sampling_dtype,
        )

    def pairs_sampling(self, round_: int = 1) -> PairsConfig:
        """How the SFT model (in round 1) or the last round's DPO model samples the candidates of each pair. Sample j
        draws from seed + j, so each round starts past the seeds of the rounds before it."""
        return PairsConfig(
            num_samples=self.pair_samples,
            temperatures=list(self.pair_temperatures),
            max_new_tokens=self.sampling_max_new_tokens,
            batch_size=self.generation_batch_size,
            dtype=self.sampling_dtype,
            seed=self.seed + (round_ - 1) * self.pair_samples,
            limit=self.pair_prompts,
            min_score_gap=self.min_score_gap,
            max_chosen_repetition=self.max_repetition,
            rewrite=self.rewrite_pairs,
            contrast=self.rewrite_pairs and self.contrast_pairs,
            mirror=self.rewrite_pairs and self.contrast_pairs and self.mirror_pairs,
        )

    def eval_generation(self) -> GenerationConfig:
        """How every model answers the held-out prompts in the evaluation (greedy)."""
        return GenerationConfig(
            seed=self.seed,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.generation_batch_size,
            dtype=self.eval_dtype,
        )


# `--quick`: every stage, small. Sized so the whole demo runs in a few minutes on 2 CPU cores (CI).
QUICK: dict[str, Any] = {
    "output_dir": "runs/demo-quick",
    "eval_limit": 16,
    "max_new_tokens": 96,
    "sft_prompts": 32,
    "sft_epochs": 1,
    "pair_prompts": 32,
    "max_length": 192,
    "max_prompt_length": 112,
    "dpo_epochs": 1,
    "heldout_fraction": 0.2,
}
