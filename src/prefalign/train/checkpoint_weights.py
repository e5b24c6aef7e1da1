"""The weights of a training checkpoint: a peft model's adapters (plus, when the peft model sits inside a wrapper
such as the reward model, the wrapper's own weights), or a full model's state dict."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import PrefalignError, brief_error

ADAPTER_DIR = "adapter"
MODEL_FILE = "model.safetensors"
HEAD_FILE = "head.safetensors"


def find_peft(model: torch.nn.Module) -> tuple[str, torch.nn.Module] | None:
    """(name, module) of the peft model in `model`: `model` itself (name "") or the submodule that is one (a reward
    model's LM); None for a model without adapters."""
    try:
        from peft import PeftModel
    except ImportError:
        return None
    return next(((name, module) for name, module in model.named_modules() if isinstance(module, PeftModel)), None)


def _outside_adapter(model: torch.nn.Module, peft_name: str) -> dict[str, torch.Tensor]:
    """The state of `model` that is not part of its peft submodule `peft_name`: a reward model's head."""
    if not peft_name:
        return {}
    inside = peft_name + "."
    return {key: value for key, value in model.state_dict().items() if not key.startswith(inside)}


def _adapter_dir(checkpoint: Path, adapter_name: str) -> Path:
    # Where PeftModel.save_pretrained puts each adapter: "default" at the top, any other in a subfolder of its name.
    base = checkpoint / ADAPTER_DIR
    return base if adapter_name == "default" else base / adapter_name


def save_weights(model: torch.nn.Module, directory: Path) -> None:
    """Write what of `model` trains into the checkpoint directory `directory`."""
    from safetensors.torch import save_file, save_model

    found = find_peft(model)
    if found is not None:
        # Only what trains: the adapters and the wrapper's own weights (a reward head). The base weights are the
        # unchanged model the run started from, and would make each checkpoint as large as the model.
        name, peft_model = found
        peft_model.save_pretrained(str(directory / ADAPTER_DIR))
        if outside := _outside_adapter(model, name):
            save_file(
                {key: value.detach().cpu().contiguous() for key, value in outside.items()}, str(directory / HEAD_FILE)
            )
    else:
        # save_model drops the duplicate names of shared tensors (tied embeddings), which save_file would refuse.
        save_model(model, str(directory / MODEL_FILE))


def load_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Load what `save_weights` wrote into `model`, or say in one line why it does not fit."""
    from safetensors.torch import load_model

    has_adapter, has_model = (checkpoint / ADAPTER_DIR).is_dir(), (checkpoint / MODEL_FILE).is_file()
    found = find_peft(model)
    if found is not None:
        if not has_adapter:
            raise PrefalignError(f"{checkpoint}: holds full model weights, but this run trains a LoRA adapter")
        name, peft_model = found
        _load_adapters(peft_model, checkpoint)
        _load_outside_adapter(model, name, checkpoint)
    else:
        if not has_model:
            raise PrefalignError(f"{checkpoint}: holds a LoRA adapter, but this run fine-tunes the full model")
        try:
            missing, unexpected = load_model(model, str(checkpoint / MODEL_FILE), strict=False)
        except RuntimeError as exc:  # load_state_dict's shape mismatches, reported even when not strict
            raise PrefalignError(f"{checkpoint}: weights do not fit this model ({brief_error(exc)})") from None
        if missing or unexpected:
            example = min(missing or unexpected)
            raise PrefalignError(f"{checkpoint}: weights do not fit this model (e.g. {example}); same --model?")


def _load_adapters(peft_model: torch.nn.Module, checkpoint: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    for name in peft_model.peft_config:
        file = _adapter_dir(checkpoint, name) / "adapter_model.safetensors"
        if not file.is_file():
            raise PrefalignError(f"{checkpoint}: no weights for adapter {name!r} ({file} is missing)")
        result = set_peft_model_state_dict(peft_model, load_file(str(file)), adapter_name=name)
        if result.unexpected_keys:
            raise PrefalignError(
                f"{checkpoint}: adapter {name!r} does not fit this model (e.g. {result.unexpected_keys[0]}); "
                "resume with the same LoRA options"
            )


def _load_outside_adapter(model: torch.nn.Module, peft_name: str, checkpoint: Path) -> None:
    from safetensors.torch import load_file

    expected, file = set(_outside_adapter(model, peft_name)), checkpoint / HEAD_FILE
    saved = load_file(str(file)) if file.is_file() else {}
    if set(saved) != expected:
        example = min(set(saved) ^ expected)
        raise PrefalignError(
            f"{checkpoint}: the weights around the adapter do not fit this model (e.g. {example}); "
            "resume with the same command and --model"
        )
    if saved:
        try:
            model.load_state_dict(saved, strict=False)  # the peft part is loaded above; these are the rest
        except RuntimeError as exc:
            raise PrefalignError(f"{checkpoint}: weights do not fit this model ({brief_error(exc)})") from None
