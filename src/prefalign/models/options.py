"""The options naming a model to load and generate with: one option group, shared by the commands that sample from a
model (`prefalign generate`, `prefalign pairs build`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .loading import load_model, load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class ModelOptions:
    """`--model` and `--trust-remote-code`."""

    model: str = field(metadata={"help": "registered name, local HF directory or hub id (org/name)"})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "allow the model's repository to run its own Python code"}
    )

    def load(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The model and its tokenizer."""
        tokenizer = load_tokenizer(self.model, trust_remote_code=self.trust_remote_code)
        return load_model(self.model, trust_remote_code=self.trust_remote_code), tokenizer
