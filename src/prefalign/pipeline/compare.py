"""`prefalign compare`: several preference methods trained on the same pairs from the same SFT model, then evaluated
together in one report.

Every method gets the same training settings (model, pairs, steps, batch, learning rate, seed, beta), differing only
in `--loss` and, where a method's scale differs (SimPO's beta is about 20 times DPO's), in a `--method-beta`. Each
trains in OUTPUT_DIR/train/<label>, a resumable run that a second `compare` with the same settings finds finished and
reuses. The evaluation (`prefalign.evaluate`) then compares every method with the SFT model and
with each other, with 95% intervals, the KL from the SFT model, lengths, the judges' scores and, with --eval-data,
the implicit-reward accuracy on held-out pairs (beta * log-ratio to the SFT model, for every method alike).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..console import say
from ..errors import PrefalignError
from ..generate import GenerationDtype
from ..scoring.preference import is_reference_free, parse_loss_mixture
from ..train.config import DPOConfig, Precision

if TYPE_CHECKING:
    from ..evaluate.results import EvalReport

DEFAULT_METHODS = ["sigmoid", "simpo", "orpo", "kto", "apo_zero"]
SFT_LABEL = "sft"


def _help(text: str, metavar: str | None = None) -> dict[str, Any]:
    return {"help": text, **({"metavar": metavar} if metavar else {})}


@dataclass
class CompareConfig:
    """What `prefalign compare` trains and evaluates."""

    model: str = field(kw_only=True, metadata=_help("the SFT model every method starts from"))
    data: str = field(kw_only=True, metadata=_help("the preference pairs every method trains on"))
    prompts: str = field(kw_only=True, metadata=_help("prompts to evaluate on (a file, or builtin[:heldout])"))
    output_dir: str = field(kw_only=True, metadata=_help("where the runs (train/LABEL) and the report (eval/) go"))
    methods: list[str] = field(
        default_factory=lambda: list(DEFAULT_METHODS),
        metadata=_help("--loss of each method to train (a name, or a mixture NAME:WEIGHT,...)", "LOSS"),
    )
    eval_data: str | None = field(
        default=None, metadata=_help("held-out pairs: validation during training and implicit-reward accuracy")
    )
    max_steps: int = field(default=50, metadata=_help("optimizer steps of every method"))
    batch_size: int = field(default=4, metadata=_help("pairs per forward pass (KTO: completions)"))
    learning_rate: float | None = field(default=None, metadata=_help("peak learning rate (default: DPO's)"))
    beta: float = field(default=0.1, metadata=_help("--beta of every method without a --method-beta"))
    method_beta: list[str] = field(
        default_factory=list,
        metadata=_help("METHOD=BETA: this method's own beta, e.g. simpo=2.0 (SimPO's paper uses 2 to 2.5)", "M=B"),
    )
    max_length: int = field(default=1024, metadata=_help("most tokens of prompt + completion in training"))
    max_prompt_length: int = field(default=512, metadata=_help("most prompt tokens in training"))
    lora: bool = field(default=True, metadata=_help("train LoRA adapters (merged for the evaluation)"))
    lora_layers: int | None = field(
        default=None, metadata=_help("adapt only the last N blocks (faster backward); default: every block", "N")
    )
    precision: Precision = field(
        default="auto", metadata=_help("training matmul precision: bf16, fp32 or auto (bf16 on CUDA)")
    )
    seed: int = field(default=42, metadata=_help("seed of training and of the evaluation's sampling"))
    judges: list[str] = field(
        default_factory=list, metadata=_help("judges of the evaluation (default: the verifier when it applies)")
    )
    limit: int | None = field(default=None, metadata=_help("evaluate on the first N prompts only", "N"))
    max_new_tokens: int = field(default=256, metadata=_help("most new tokens of each evaluated response"))
    generation_batch_size: int = field(default=16, metadata=_help("prompts decoded together in the evaluation"))
    dtype: GenerationDtype = field(
        default="model", metadata=_help("precision of the evaluation's answers and KL samples (as eval --dtype)")
    )
    kl_samples: int = field(default=2, metadata=_help("responses sampled per prompt for the KL (0: no KL)", "K"))

    def __post_init__(self) -> None:
        if not self.methods:
            raise PrefalignError("--methods: name at least one method")
        for method in self.methods:
            try:
                parse_loss_mixture(method)
            except ValueError as exc:
                raise PrefalignError(str(exc)) from None
        labels = [method_label(method) for method in self.methods]
        if len(set(labels)) != len(labels) or SFT_LABEL in labels:
            raise PrefalignError(f"--methods {' '.join(self.methods)}: each method must be different")
        self.betas()  # a bad --method-beta fails now too
        self.training_config(self.methods[0])  # bad training options fail now, before anything trains

    def betas(self) -> dict[str, float]:
        """Each method's beta: its --method-beta, else --beta."""
        given: dict[str, float] = {}
        for entry in self.method_beta:
            method, sep, value = entry.partition("=")
            if not sep or method not in self.methods:
                raise PrefalignError(f"--method-beta {entry}: expected METHOD=BETA with METHOD one of --methods")
            try:
                given[method] = float(value)
            except ValueError:
                raise PrefalignError(f"--method-beta {entry}: {value!r} is not a number") from None
            if not (math.isfinite(given[method]) and given[method] > 0):
                raise PrefalignError(f"--method-beta {entry}: beta must be a positive number")
        return {method: given.get(method, self.beta) for method in self.methods}

    def training_config(self, method: str) -> DPOConfig:
        """The run of one method: the shared settings, its --loss and its beta."""
        return DPOConfig(
            model=self.model,
            data=self.data,
            eval_data=self.eval_data,
            output_dir=str(Path(self.output_dir) / "train" / method_label(method)),
            loss=method,
            beta=self.betas()[method],
            max_length=self.max_length,
            max_prompt_length=self.max_prompt_length,
            lora_layers=self.lora_layers,
            precision=self.precision,
            # a method with a reference scores it once, before training, instead of at every step
            precompute_ref=not is_reference_free(parse_loss_mixture(method)),
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            lora=self.lora,
            merge=self.lora,
            seed=self.seed,
            eval_steps=max(1, self.max_steps),
            save_steps=max(1, self.max_steps // 2),
            keep_checkpoints=1,
            resume=True,
            plots=False,
        )


def method_label(method: str) -> str:
    """A method's column label: its --loss, with `:` and `,` (not allowed in labels) as `-` and `+`."""
    return re.sub(r"\s+", "", method).replace(":", "-").replace(",", "+")


def train_method(config: CompareConfig, method: str) -> Path:
    """Train one method, or find it trained with the same settings; return its run directory."""
    from ..train.loop import train  # torch: only when something trains
    from ..train.objectives import DPOObjective

    train_config = config.training_config(method)
    out = Path(train_config.output_dir)
    settings = json.loads(json.dumps({key: value for key, value in asdict(train_config).items() if key != "resume"}))
    record = out / "compare.json"  # the settings of a finished run
    if record.is_file():
        if json.loads(record.read_text()) != settings:
            raise PrefalignError(f"{out} holds a run of {method} with other settings: remove it, or use another -o")
        say(f"{method}: trained already ({out})")
        return out
    started = time.perf_counter()
    train(train_config, DPOObjective(train_config))
    record.write_text(json.dumps(settings, sort_keys=True))
    say(f"{method}: trained in {time.perf_counter() - started:.0f}s ({out})")
    return out


def compare_baselines(labels: list[str]) -> list[tuple[str, str]]:
    """Each method against the SFT model, then each method against every other."""
    return [(label, SFT_LABEL) for label in labels] + list(itertools.combinations(labels, 2))


def run_compare(config: CompareConfig) -> EvalReport:
    """Train every method, then evaluate them all, with the SFT model, in OUTPUT_DIR/eval."""
    from ..evaluate.config import EvalConfig  # generation and evaluation import torch: only when compare runs
    from ..evaluate.run import run_evaluation
    from ..generate import GenerationConfig

    runs = {method_label(method): train_method(config, method) for method in config.methods}
    eval_config = EvalConfig(
        models=[(SFT_LABEL, config.model), *((label, str(run)) for label, run in runs.items())],
        prompts=config.prompts,
        output_dir=Path(config.output_dir) / "eval",
        generation=GenerationConfig(
            max_new_tokens=config.max_new_tokens,
            seed=config.seed,
            batch_size=config.generation_batch_size,
            dtype=config.dtype,
        ),
        judges=config.judges,
        baselines=compare_baselines(list(runs)),
        pairs=config.eval_data,
        reference=SFT_LABEL if config.eval_data else None,
        beta=config.beta,
        runs={label: str(run) for label, run in runs.items()},
        limit=config.limit,
        kl_samples=config.kl_samples,
        kl_max_new_tokens=min(64, config.max_new_tokens),
    )
    return run_evaluation(eval_config)
