"""What an evaluation compares, on what, and how: `EvalConfig`, checked before any model is loaded."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PrefalignError
from ..generate import GenerationConfig
from ..judges.options import JudgeOptions

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def parse_labelled(text: str, option: str) -> tuple[str, str]:
    """`LABEL=VALUE` -> (LABEL, VALUE); PrefalignError naming the option otherwise."""
    label, sep, value = text.partition("=")
    if not sep or not label or not value:
        raise PrefalignError(f"{option} expects LABEL=VALUE (e.g. {option} sft=runs/sft), got {text!r}")
    if not _LABEL.match(label):
        raise PrefalignError(f"{option} {text!r}: a label is letters, digits and _.+-, starting with a letter or digit")
    return label, value


def parse_baseline(text: str) -> tuple[str, str]:
    """`MODEL:BASELINE` -> (MODEL, BASELINE)."""
    model, sep, baseline = text.partition(":")
    if not sep or not model or not baseline:
        raise PrefalignError(f"--baseline expects MODEL:BASELINE labels (e.g. dpo:sft), got {text!r}")
    return model, baseline


def _parse_model(text: str) -> tuple[str, str]:
    return parse_labelled(text, "--model")


def _parse_run(text: str) -> tuple[str, str]:
    return parse_labelled(text, "--run")


_WHAT, _JUDGES, _HELDOUT = "what to compare", "judges", "held-out pairs and drift"


def _option(group: str, help_text: str, metavar: str | None = None, **more: Any) -> dict[str, Any]:
    return {"group": group, "help": help_text, **({"metavar": metavar} if metavar else {}), **more}


@dataclass
class EvalConfig:
    """An evaluation, and the options of `prefalign eval`. `models` are (label, spec) in column order, the base model
    first.

    Defaults: `baselines` compare each model with the one listed before it, the last model first (base, sft, dpo ->
    dpo:sft, sft:base); the table's Δ column is the first baseline pair. `reference` (for the implicit reward on
    `pairs`) is the first pair's baseline; the implicit reward is computed for every model listed after it. Judges
    default to the verifier when prompts carry verifiable instructions.
    """

    models: list[tuple[str, str]] = field(
        metadata=_option(
            _WHAT,
            "a model (registered name, HF directory, LoRA adapter directory, training run directory or hub id) and "
            "its column label; repeat, the base model first",
            "LABEL=SPEC",
            option="model",
            repeat=True,
            parse=_parse_model,
        )
    )
    prompts: str = field(
        metadata=_option(
            _WHAT,
            "prompts: a .jsonl/.json/.txt file (records may carry id, instruction_id_list and kwargs), or "
            "builtin[:heldout|train|all] for the built-in set (builtin = held-out)",
            "FILE",
        )
    )
    output_dir: Path = field(metadata=_option(_WHAT, "where the report is written", flags=("-o",)))
    generation: GenerationConfig = field(
        default_factory=GenerationConfig, metadata={"group": "decoding (the same for every model)"}
    )
    judges: list[str] = field(
        default_factory=list,
        metadata=_option(
            _JUDGES,
            "verifier, verifier:loose, openai:MODEL, anthropic:MODEL, ... (repeat). Default: the verifier when the "
            "prompts carry verifiable instructions",
            "SPEC",
            option="judge",
            repeat=True,
        ),
    )
    judge: JudgeOptions = field(default_factory=JudgeOptions)
    baselines: list[tuple[str, str]] | None = field(
        default=None,
        metadata=_option(
            _WHAT,
            "compare MODEL with BASELINE (repeat; the first pair is the table's Δ column). Default: each model with "
            "the one listed before it, last first (base, sft, dpo: dpo:sft, sft:base)",
            "MODEL:BASELINE",
            option="baseline",
            repeat=True,
            parse=parse_baseline,
        ),
    )
    pairs: str | None = field(
        default=None,
        metadata=_option(
            _HELDOUT,
            "held-out preference pairs: implicit-reward accuracy of the models listed after --reference, and each "
            "judge's accuracy",
            "FILE",
        ),
    )
    pairs_limit: int | None = field(default=None, metadata=_option(_HELDOUT, "use the first N pairs only", "N"))
    reference: str | None = field(
        default=None,
        metadata=_option(
            _HELDOUT, "reference model of the implicit reward (default: the first baseline pair's baseline)", "LABEL"
        ),
    )
    beta: float = field(default=0.1, metadata=_option(_HELDOUT, "DPO beta of the implicit reward"))
    implicit_reward: bool = field(
        default=True,
        metadata=_option(
            _HELDOUT,
            "with --pairs, the implicit-reward accuracy of the models listed after --reference (a forward pass of each "
            "of them and of the reference over the pairs); --no-implicit-reward: the judges' accuracy only",
        ),
    )
    runs: dict[str, str] = field(
        default_factory=dict,
        metadata=_option(
            _WHAT,
            "a training run directory (with metrics.jsonl) whose curves go into the report",
            "LABEL=DIR",
            option="run",
            repeat=True,
            parse=_parse_run,
        ),
    )
    limit: int | None = field(default=None, metadata=_option(_WHAT, "evaluate the first N prompts only", "N"))
    kl_samples: int = field(
        default=2,
        metadata=_option(
            _HELDOUT,
            "responses sampled per prompt (temperature 1) to estimate each model's KL from the base; 0 skips the KL",
            "K",
        ),
    )
    kl_max_new_tokens: int = field(
        default=64,
        metadata=_option(_HELDOUT, "token budget of those samples: the KL covers the first N tokens", "N"),
    )
    kl_prompts: int | None = field(
        default=None,
        metadata=_option(
            _HELDOUT, "estimate the KL on the first N prompts only (default: every prompt); it costs a model pass", "N"
        ),
    )
    cache_dir: Path | None = field(
        default=None, metadata=_option(_WHAT, "generation cache (default: OUTPUT_DIR/cache)", "DIR")
    )
    trust_remote_code: bool = field(
        default=False, metadata=_option(_WHAT, "allow models' repositories to run their own Python code")
    )

    @property
    def judge_options(self) -> dict[str, Any]:
        """`load_judge` keyword arguments for the HTTP judges."""
        return self.judge.load_kwargs()

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.prompts = str(self.prompts)  # a path given as a Path is the same path, and JSON-able as text
        self.pairs = str(self.pairs) if self.pairs is not None else None
        if not self.models:
            raise PrefalignError("name at least one model: --model LABEL=SPEC")
        labels = self.labels
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise PrefalignError(f"model label {duplicates[0]!r} is used twice; labels name table columns")
        for model, baseline in self.baselines or []:
            for label in (model, baseline):
                self._check_label(label, f"--baseline {model}:{baseline}")
            if model == baseline:
                raise PrefalignError(f"--baseline {model}:{baseline} compares a model with itself")
        if self.reference is not None:
            self._check_label(self.reference, "--reference")
        for label in self.runs:
            self._check_label(label, f"--run {label}=...")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise PrefalignError(f"--beta must be a positive number, got {self.beta}")
        if self.kl_samples < 0:
            raise PrefalignError(f"--kl-samples must be 0 (no KL) or more, got {self.kl_samples}")
        if self.kl_max_new_tokens < 1:
            raise PrefalignError(f"--kl-max-new-tokens must be at least 1, got {self.kl_max_new_tokens}")
        if self.kl_prompts is not None and self.kl_prompts < 1:
            raise PrefalignError(f"--kl-prompts must be at least 1, got {self.kl_prompts}")
        for name, value in (("--limit", self.limit), ("--pairs-limit", self.pairs_limit)):
            if value is not None and value < 1:
                raise PrefalignError(f"{name} must be at least 1, got {value}")
        if self.pairs is not None and self.implicit_reward and self.reference_label is None:
            raise PrefalignError("--pairs needs a reference model for the implicit reward: add --reference LABEL")

    def _check_label(self, label: str, where: str) -> None:
        if label not in self.labels:
            raise PrefalignError(f"{where}: no model is labelled {label!r} (labels: {', '.join(self.labels)})")

    @property
    def labels(self) -> list[str]:
        return [label for label, _ in self.models]

    @property
    def base_label(self) -> str:
        return self.labels[0]

    @property
    def baseline_pairs(self) -> list[tuple[str, str]]:
        if self.baselines is not None:
            return list(self.baselines)
        labels = self.labels
        return [(labels[i], labels[i - 1]) for i in range(len(labels) - 1, 0, -1)]

    @property
    def reference_label(self) -> str | None:
        if self.reference is not None:
            return self.reference
        pairs = self.baseline_pairs
        return pairs[0][1] if pairs else None

    @property
    def implicit_reward_labels(self) -> list[str]:
        """The models whose implicit reward against the reference is measured: those listed after it."""
        reference = self.reference_label
        if self.pairs is None or reference is None or not self.implicit_reward:
            return []
        return self.labels[self.labels.index(reference) + 1 :]

    @property
    def cache_root(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir is not None else self.output_dir / "cache"
