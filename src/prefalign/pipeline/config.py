"""The demo's settings: one dataclass, loadable from YAML (`prefalign demo --config my.yaml`), overridable per option.

The defaults are the embedded workflow sized for a 2-core CPU (about half an hour, generation being most of it);
`--quick` swaps in `QUICK`, a smaller version of every stage for CI, before the YAML file and the command line apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import PrefalignError


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class DemoConfig:
    output_dir: str = field(default="runs/demo", metadata=_help("where every stage writes its directory"))
    model: str = field(default="smollm2-135m-instruct", metadata=_help("base model: registry name or HF directory"))
    quick: bool = field(default=False, metadata=_help("the small version of every stage (CI; a few minutes)"))
    seed: int = field(default=0, metadata=_help("seed of sampling, data splits and training"))

    # Prompts: a prompts file (JSONL with `prompt`, optional `id`, `instruction_id_list`, `kwargs`) or builtin[:split].
    train_prompts: str = field(default="builtin:train", metadata=_help("prompts for SFT sampling and pair building"))
    eval_prompts: str = field(
        default="builtin:heldout",
        metadata=_help("held-out prompts of the final evaluation; `heldout-pairs`: the prompts of the held-out pairs"),
    )
    eval_limit: int = field(default=100, metadata=_help("evaluate on the first N held-out prompts"))

    # Generation, everywhere.
    max_new_tokens: int = field(default=128, metadata=_help("most new tokens per generated response"))
    generation_batch_size: int = field(default=64, metadata=_help("prompts decoded together"))

    # SFT: rejection sampling from the base model (unless sft_data is given), then LoRA SFT.
    sft_data: str | None = field(
        default=None, metadata=_help("your SFT data (prompt/completion, messages or preference records: chosen)")
    )
    sft_prompts: int = field(default=96, metadata=_help("train prompts the base model samples for SFT"))
    sft_samples: int = field(default=2, metadata=_help("samples per prompt; the first that passes every check is kept"))
    sft_temperature: float = field(default=0.7, metadata=_help("temperature of the SFT samples"))
    sft_epochs: int = field(default=2, metadata=_help("SFT epochs"))
    sft_learning_rate: float = field(default=2e-4, metadata=_help("SFT learning rate (LoRA)"))

    # Preference pairs: sampled from the SFT model and judged (unless preference_data is given).
    preference_data: str | None = field(
        default=None, metadata=_help("your preference pairs (any format `prefalign data` reads); skips building")
    )
    data_limit: int | None = field(
        default=None, metadata=_help("use only the first N records of sft_data and preference_data")
    )
    judge: str = field(default="verifier", metadata=_help("judge that picks the better of two samples"))
    pair_prompts: int = field(default=144, metadata=_help("train prompts to build pairs from"))
    pair_samples: int = field(default=2, metadata=_help("samples per prompt; with more than 2, best vs worst"))
    pair_temperatures: list[float] = field(
        default_factory=lambda: [0.7, 1.2], metadata=_help("sampling temperatures, cycled over the samples")
    )
    heldout_fraction: float = field(
        default=0.1, metadata=_help("fraction of the pairs held out (validation, held-out accuracy)")
    )

    # Training (reward model and DPO; the SFT above shares the lengths and LoRA settings).
    max_length: int = field(default=320, metadata=_help("most tokens of prompt + response in training"))
    max_prompt_length: int = field(default=160, metadata=_help("most prompt tokens in training"))
    train_batch_size: int = field(default=8, metadata=_help("examples (or pairs) per optimizer step"))
    save_steps: int = field(default=10, metadata=_help("checkpoint every N steps: a killed stage resumes from there"))
    lora_rank: int = field(default=16, metadata=_help("LoRA rank of the SFT, reward-model and DPO adapters"))
    lora_layers: int | None = field(
        default=15, metadata=_help("SFT and DPO adapt only the last N blocks (faster backward); none: every block")
    )
    rm_lora_layers: int | None = field(default=10, metadata=_help("the same for the reward model"))
    rm_epochs: int = field(default=1, metadata=_help("reward-model epochs"))
    rm_learning_rate: float = field(default=2e-4, metadata=_help("reward-model learning rate (LoRA and head)"))
    beta: float = field(default=0.1, metadata=_help("DPO beta"))
    dpo_epochs: int = field(default=3, metadata=_help("DPO epochs"))
    dpo_learning_rate: float = field(default=2e-4, metadata=_help("DPO learning rate (LoRA)"))

    # Evaluation.
    eval_judges: list[str] = field(
        default_factory=list, metadata=_help("judges besides the verifier and the trained reward model")
    )
    kl_samples: int = field(default=1, metadata=_help("samples per prompt for the KL-from-base estimate"))

    def __post_init__(self) -> None:
        for name in (
            "eval_limit",
            "max_new_tokens",
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
        if not 0 < self.heldout_fraction < 1:
            raise PrefalignError(f"--heldout-fraction must be between 0 and 1, got {self.heldout_fraction}")
        if self.max_prompt_length >= self.max_length:
            raise PrefalignError("--max-prompt-length must be below --max-length: the response needs room")
        for name in ("sft_temperature", "beta", "sft_learning_rate", "rm_learning_rate", "dpo_learning_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise PrefalignError(f"--{name.replace('_', '-')} must be a positive number, got {value}")


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
    "rm_epochs": 1,
    "dpo_epochs": 1,
    "heldout_fraction": 0.2,
}
