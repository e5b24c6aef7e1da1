"""What an evaluation compares, on what, and how: `EvalConfig`, checked before any model is loaded."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PrefalignError
from ..generate import GenerationConfig

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


@dataclass
class EvalConfig:
    """An evaluation. `models` are (label, spec) in column order, the base model first.

    Defaults: `baselines` compare each model with the one listed before it, the last model first (base, sft, dpo ->
    dpo:sft, sft:base); the table's Δ column is the first baseline pair. `reference` (for the implicit reward on
    `pairs`) is the first pair's baseline; the implicit reward is computed for every model listed after it. Judges
    default to the verifier when prompts carry verifiable instructions.
    """

    models: list[tuple[str, str]]
    prompts: str
    output_dir: Path
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judges: list[str] = field(default_factory=list)
    judge_options: dict[str, Any] = field(default_factory=dict)  # for HTTP judges: base_url, api_key_env, ...
    baselines: list[tuple[str, str]] | None = None
    pairs: str | None = None
    pairs_limit: int | None = None
    reference: str | None = None
    beta: float = 0.1
    runs: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    kl_samples: int = 2
    kl_max_new_tokens: int = 64
    cache_dir: Path | None = None
    trust_remote_code: bool = False

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
        for name, value in (("--limit", self.limit), ("--pairs-limit", self.pairs_limit)):
            if value is not None and value < 1:
                raise PrefalignError(f"{name} must be at least 1, got {value}")
        if self.pairs is not None and self.reference_label is None:
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
        if self.pairs is None or reference is None:
            return []
        return self.labels[self.labels.index(reference) + 1 :]

    @property
    def cache_root(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir is not None else self.output_dir / "cache"
