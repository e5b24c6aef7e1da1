"""Training configs: `TrainConfig` holds what every trainer shares; `DPOConfig` and `SFTConfig` add their objective's.

Each field is one command-line option (`--kebab-case`, help from `metadata["help"]`) and one YAML key; see
`prefalign.config`. Validation happens in `__post_init__`, so a bad value fails before a model is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from ..data.tokenize import PromptFormat, TokenizeConfig
from ..errors import PrefalignError
from ..scoring.preference import LOSS_NAMES, is_reference_free, parse_loss_mixture
from .trackers import check_report_to

Schedule = Literal["linear", "cosine", "constant"]
Precision = Literal["auto", "bf16", "fp32"]

# Peak learning rates when --learning-rate is not given: LoRA trains a few small matrices from zero and needs a step
# size about ten times larger than full fine-tuning, which moves every pretrained weight.
_DEFAULT_LR = {
    ("dpo", False): 5e-6,
    ("dpo", True): 5e-5,
    ("sft", False): 2e-5,
    ("sft", True): 2e-4,
    ("rm", False): 1e-5,
    ("rm", True): 1e-4,
}  # the reward model's head always trains at this rate too


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class TrainConfig:
    """Options shared by every trainer: model, data, optimisation, logging and saving."""

    # What to train on, and where the results go: required, keyword-only (so the fields after them keep defaults).
    model: str = field(kw_only=True, metadata=_help("policy to train: registry name, HF directory or hub id"))
    data: str = field(kw_only=True, metadata=_help("training data: .jsonl[.gz], .json, .parquet, .csv, dir"))
    output_dir: str = field(kw_only=True, metadata=_help("run directory (metrics, checkpoints, final model)"))
    data_format: str = field(default="auto", metadata=_help("record format: auto, hh, explicit or conversational"))
    eval_data: str | None = field(default=None, metadata=_help("held-out file to validate on (or --eval-split)"))
    eval_split: float = field(default=0.0, metadata=_help("fraction of --data held out for validation, e.g. 0.05"))
    max_length: int = field(default=1024, metadata=_help("most tokens of prompt + completion"))
    max_prompt_length: int = field(default=512, metadata=_help("most prompt tokens; long prompts keep their end"))
    prompt_format: PromptFormat = field(default="auto", metadata=_help("chat, raw, or auto (chat when possible)"))

    # Optimisation.
    epochs: int = field(default=1, metadata=_help("passes over the training data (unless --max-steps is given)"))
    max_steps: int | None = field(default=None, metadata=_help("optimizer steps to run; overrides --epochs"))
    batch_size: int = field(default=4, metadata=_help("examples per forward pass, per process"))
    grad_accum: int = field(default=1, metadata=_help("forward passes per optimizer step (gradient accumulation)"))
    learning_rate: float | None = field(
        default=None, metadata=_help("peak learning rate (default: 5e-6 DPO / 2e-5 SFT; x10 with --lora)")
    )
    lr_schedule: Schedule = field(default="linear", metadata=_help("decay after warmup: linear, cosine or constant"))
    warmup_ratio: float = field(default=0.1, metadata=_help("fraction of the steps spent warming the LR up from 0"))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay"))
    max_grad_norm: float = field(default=1.0, metadata=_help("clip the gradient's global norm to this (0: no clip)"))
    seed: int = field(default=42, metadata=_help("seed for initialisation, data order and the eval split"))
    gradient_checkpointing: bool = field(
        default=False,
        metadata=_help(
            "keep each layer's input only and recompute the rest in backward: activation memory of "
            "one layer instead of all, for one more forward pass"
        ),
    )
    release_memory: bool = field(
        default=True,
        metadata=_help("trim the heap after every step (glibc, milliseconds): between steps, RSS is what is live"),
    )
    trim_heap_every_layers: int = field(
        default=0,
        metadata={
            **_help(
                "also trim the heap after the forward pass and every N decoder layers of the backward pass "
                "(0: off): the lowest peak RSS, for a little step time"
            ),
            "metavar": "N",
        },
    )
    precision: Precision = field(
        default="auto",
        metadata=_help(
            "matmul precision of forward and backward: bf16 (autocast: weights, optimizer state, losses and "
            "log-prob sums stay fp32), fp32, or auto (bf16 on CUDA, fp32 on a CPU)"
        ),
    )
    fsdp: bool = field(
        default=False,
        metadata=_help(
            "under torchrun, shard parameters, gradients and optimizer state across the processes (FSDP2, per "
            "decoder layer) instead of a whole copy in each; bf16 compute on CUDA; with DPO the reference log-probs "
            "are precomputed unless --no-precompute-ref"
        ),
    )

    # LoRA (peft).
    lora: bool = field(default=False, metadata=_help("train a LoRA adapter instead of every weight"))
    lora_rank: int = field(default=16, metadata=_help("LoRA rank r"))
    lora_alpha: float = field(default=32.0, metadata=_help("LoRA scale numerator (the update is alpha / r * BA)"))
    lora_dropout: float = field(default=0.05, metadata=_help("dropout on the LoRA input"))
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"], metadata=_help("module names to adapt, or all-linear")
    )
    lora_layers: int | None = field(
        default=None, metadata=_help("adapt only the last N transformer blocks (the backward pass stops below them)")
    )
    prefix_cache_mb: int = field(
        default=2048,
        metadata=_help(
            "with --lora-layers: keep each sequence's hidden state below the adapted blocks, computed once instead of "
            "in every epoch and validation, until the cache holds this many MiB (0: off)"
        ),
    )
    merge: bool = field(default=False, metadata=_help("with --lora, also save a merged model in final/merged"))

    # Reporting and saving.
    logging_steps: int = field(default=10, metadata=_help("log training metrics every N steps (and at step 1)"))
    eval_steps: float = field(
        default=50,
        metadata=_help(
            "validate every N steps, or below 1 every that fraction of the run (0.5: halfway), and before and after "
            "training"
        ),
    )
    save_steps: int = field(default=100, metadata=_help("checkpoint every N steps (0: no intermediate checkpoints)"))
    keep_checkpoints: int = field(default=2, metadata=_help("checkpoints kept on disk (the newest ones)"))
    resume: bool = field(default=False, metadata=_help("continue from the newest complete checkpoint in output-dir"))
    report_to: list[str] = field(
        default_factory=lambda: ["none"],
        metadata=_help(
            "experiment trackers to log to besides metrics.jsonl: tensorboard, wandb, trackio, mlflow "
            "(several at once), or none (default: none)"
        ),
    )
    project: str = field(default="prefalign", metadata=_help("the W&B / Trackio project or MLflow experiment"))
    run_name: str | None = field(
        default=None, metadata=_help("the run's name in the trackers (default: the output directory's name)")
    )
    progress: bool = field(default=True, metadata=_help("show a progress bar"))
    plots: bool = field(default=True, metadata=_help("draw output-dir/plots/*.png at the end"))

    # Divergence: every step's metrics are judged before its update (prefalign.train.health); 0 turns a check off.
    on_divergence: Literal["stop", "warn"] = field(
        default="stop",
        metadata=_help(
            "when a step's metrics pass a --divergence-* limit: stop before its update, keeping the last good "
            "checkpoint (stop), or train on and list it in summary.json (warn)"
        ),
    )
    divergence_loss_factor: float = field(
        default=10.0,
        metadata={
            **_help("a step's loss above N x its mean over the first 5 steps is divergence (0: off)"),
            "metavar": "N",
        },
    )
    divergence_max_kl: float = field(
        default=5.0,
        metadata={
            **_help("DPO: a KL from the reference above N nats per token is divergence (0: off)"),
            "metavar": "N",
        },
    )
    divergence_logp_factor: float = field(
        default=4.0,
        metadata=_help(
            "DPO: the responses' log-probability more than N x the reference's (N times less likely per token, "
            "in log terms) is divergence (0: off)"
        )
        | {"metavar": "N"},
    )

    # Which objective this config is for ("dpo", "sft"): picks defaults, not an option.
    objective_name = "train"

    def __post_init__(self) -> None:
        for name in ("model", "data", "output_dir"):
            if not getattr(self, name):  # an empty string, or None passed from Python
                option = name.replace("_", "-")
                raise PrefalignError(f"missing --{option} (or `{option}:` in the --config file)")
        if self.eval_data and self.eval_split:
            raise PrefalignError("give --eval-data or --eval-split, not both")
        if not 0.0 <= self.eval_split < 1.0:
            raise PrefalignError(f"--eval-split must be in [0, 1), got {self.eval_split}")
        if self.precision not in get_args(Precision):
            raise PrefalignError(f"--precision must be one of {', '.join(get_args(Precision))}, got {self.precision!r}")
        positive = (
            "epochs",
            "batch_size",
            "grad_accum",
            "logging_steps",
            "keep_checkpoints",
            "lora_rank",
            "max_length",
            "max_prompt_length",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise PrefalignError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not (0 < self.eval_steps < 1 or (self.eval_steps >= 1 and float(self.eval_steps).is_integer())):
            raise PrefalignError(
                f"--eval-steps must be a whole number of steps or a fraction in (0, 1), got {self.eval_steps}"
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise PrefalignError(f"--max-steps must be at least 1, got {self.max_steps}")
        if self.save_steps < 0:
            raise PrefalignError(f"--save-steps must be 0 or more, got {self.save_steps}")
        if self.trim_heap_every_layers < 0:
            raise PrefalignError(f"--trim-heap-every-layers must be 0 or more, got {self.trim_heap_every_layers}")
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise PrefalignError(f"--learning-rate must be a positive number, got {self.learning_rate}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise PrefalignError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.lora_layers is not None and not self.lora:
            raise PrefalignError("--lora-layers applies to a LoRA adapter: add --lora")
        if self.prefix_cache_mb < 0:
            raise PrefalignError(f"--prefix-cache-mb must be 0 (off) or more, got {self.prefix_cache_mb}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise PrefalignError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.merge and not self.lora:
            raise PrefalignError("--merge applies to a LoRA adapter: add --lora")
        for name in ("divergence_loss_factor", "divergence_max_kl", "divergence_logp_factor"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise PrefalignError(f"--{name.replace('_', '-')} must be 0 (off) or more, got {value}")
        for name in ("divergence_loss_factor", "divergence_logp_factor"):
            if 0 < (value := getattr(self, name)) <= 1:  # a factor of 1 or less trips on the baseline itself
                raise PrefalignError(f"--{name.replace('_', '-')} must be 0 (off) or above 1, got {value}")
        check_report_to(self.report_to)  # an unknown or uninstalled tracker fails here, before anything loads

    @property
    def peak_learning_rate(self) -> float:
        """--learning-rate, or the default for this objective and for LoRA vs full fine-tuning."""
        if self.learning_rate is not None:
            return self.learning_rate
        return _DEFAULT_LR[(self.objective_name, self.lora)]

    def tokenize_config(self) -> TokenizeConfig:
        return TokenizeConfig(self.max_length, self.max_prompt_length, self.prompt_format)

    def eval_interval(self, total_steps: int) -> int:
        """Steps between validations in a run of `total_steps`: --eval-steps, or that fraction of the run."""
        if self.eval_steps >= 1:
            return int(self.eval_steps)
        return max(1, math.ceil(self.eval_steps * total_steps))


@dataclass
class DPOConfig(TrainConfig):
    """`prefalign dpo`: a policy trained on preference pairs against a frozen reference."""

    beta: float = field(
        default=0.1,
        metadata=_help(
            "strength of the pull towards the reference (DPO's beta); for simpo the reward scale, for orpo the "
            "weight lambda of its odds-ratio term"
        ),
    )
    loss: str = field(
        default="sigmoid",
        metadata=_help(
            f"the preference method, or a weighted mixture NAME:WEIGHT,... (e.g. sigmoid:1,sft:0.5); names: "
            f"{', '.join(LOSS_NAMES)}. simpo, orpo and sft need no reference model; kto trains on single labelled "
            "completions (README: Preference methods)"
        )
        | {"metavar": "NAME[:WEIGHT],..."},
    )
    label_smoothing: float = field(default=0.0, metadata=_help("assumed label-flip rate for cdpo and robust"))
    simpo_gamma: float = field(default=0.5, metadata=_help("SimPO's target reward margin gamma"))
    dpop_lambda: float = field(default=50.0, metadata=_help("DPO-Positive's weight of the chosen log-prob penalty"))
    ref_model: str | None = field(default=None, metadata=_help("reference model (default: a frozen copy of --model)"))
    precompute_ref: bool | None = field(
        default=None,
        metadata=_help(
            "compute reference log-probs once, cache them on disk, keep no reference model (default: on with "
            "--fsdp, off otherwise)"
        ),
    )
    prefix_sharing: bool = field(
        default=True,
        metadata=_help(
            "run each pair as one sequence [prompt | chosen | rejected], so the prompt is computed once: the "
            "batch's pairs lie in one padding-free row under pair attention (packed rows under a 4D block mask "
            "for a model whose attention cannot run it); the same log-probs as two sequences per pair"
        ),
    )

    objective_name = "dpo"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_loss()
        if self.lora and self.ref_model:
            raise PrefalignError("with --lora the reference is the model without its adapter; drop --ref-model")
        if self.precompute_ref is None:  # a sharded run keeps no whole reference model in each process
            self.precompute_ref = self.fsdp and not self.reference_free

    @property
    def loss_terms(self) -> dict[str, float]:
        """--loss as {term: weight}."""
        return parse_loss_mixture(self.loss)

    @property
    def reference_free(self) -> bool:
        """Whether every --loss term does without a reference model (then none is built or scored)."""
        return is_reference_free(self.loss_terms)

    def _check_loss(self) -> None:
        from ..losses import check_loss_args

        try:
            check_loss_args(self.loss_terms, self.beta, self.label_smoothing)
        except ValueError as exc:
            raise PrefalignError(str(exc)) from None
        for name in ("simpo_gamma", "dpop_lambda"):
            if not (math.isfinite(value := getattr(self, name)) and value >= 0):
                raise PrefalignError(f"--{name.replace('_', '-')} must be 0 or more, got {value}")
        if self.reference_free and (self.ref_model or self.precompute_ref):
            option = "--ref-model" if self.ref_model else "--precompute-ref"
            raise PrefalignError(f"--loss {self.loss} uses no reference model: drop {option}")


@dataclass
class SFTConfig(TrainConfig):
    """`prefalign sft`: supervised fine-tuning, the loss on response tokens only."""

    objective_name = "sft"


@dataclass
class RewardConfig(TrainConfig):
    """`prefalign rm train`: a reward model (the LM plus a scalar head) trained on preference pairs."""

    lm_weight: float = field(
        default=1.0, metadata=_help("weight of the LM loss on the chosen response next to the pairwise loss (0: off)")
    )

    objective_name = "rm"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.lm_weight) and self.lm_weight >= 0):
            raise PrefalignError(f"--lm-weight must be 0 or more, got {self.lm_weight}")
        if self.merge:  # a merged LM would lose nothing, but the head and adapter reload together; keep one format
            raise PrefalignError("--merge does not apply to a reward model: load it with its adapter and head as saved")
