"""LoRA adapters with peft: wrap a model, switch its adapter off (that is DPO's reference), save, merge.

With LoRA the frozen base weights ARE the reference model: running the same module with the adapter disabled gives the
initial policy's outputs exactly, so DPO needs no second copy of the model in memory.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelError

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel


def apply_lora(
    model: PreTrainedModel,
    *,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: Sequence[str],
    last_layers: int | None = None,
) -> PeftModel:
    """Freeze `model` and add a fresh LoRA adapter (B = 0, so the wrapped model computes exactly what `model` did).

    `target_modules` are module-name suffixes such as q_proj, or the single entry "all-linear" (every linear layer
    except the output head). `last_layers=N` adapts only the last N transformer blocks: nothing below them needs a
    gradient, so the backward pass stops there (on a CPU, N = a third of the blocks makes a step about 40% cheaper).
    The adapter's A matrices are drawn from torch's global RNG: seed it first.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    from .lora_forward import use_fused_forward

    targets: str | list[str] = "all-linear" if list(target_modules) == ["all-linear"] else list(target_modules)
    layers: dict = {}
    if last_layers is not None:
        total = getattr(model.config, "num_hidden_layers", None)
        if total is None:
            raise ModelError("--lora-layers needs a model whose config has num_hidden_layers")
        if not 1 <= last_layers <= total:
            raise ModelError(f"--lora-layers must be between 1 and the model's {total} layers, got {last_layers}")
        layers = {"layers_to_transform": list(range(total - last_layers, total))}
        if targets == "all-linear":  # peft takes a layer subset only with named targets: name every linear layer
            import torch

            output = model.get_output_embeddings()
            targets = sorted(
                {
                    name.rsplit(".", 1)[-1]
                    for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear) and module is not output
                }
            )
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, **layers
    )
    try:
        with _peft_deprecation_ignored():
            wrapped = get_peft_model(model, config)
    except ValueError as exc:  # peft names the missing modules; keep its first line
        raise ModelError(f"cannot add LoRA to this model: {str(exc).splitlines()[0]}") from None
    use_fast_dropout(wrapped)
    use_fused_forward(wrapped)
    return wrapped


def use_fast_dropout(model: torch.nn.Module) -> int:
    """Put a `FastDropout` in place of every LoRA dropout of `model` (peft's `nn.Dropout`s); returns how many."""
    import torch

    from .dropout import FastDropout

    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name, dropout in dropouts.items():
                if type(dropout) is torch.nn.Dropout and dropout.p > 0:
                    dropouts[name] = FastDropout(dropout.p)
                    replaced += 1
    return replaced


def load_adapter(base: PreTrainedModel, path: str | Path) -> PeftModel:
    """`base` wrapped with the peft adapter saved in `path` (as `save_adapter` writes it)."""
    from peft import PeftModel

    from .lora_forward import use_fused_forward

    with _peft_deprecation_ignored():
        model = PeftModel.from_pretrained(base, str(path))
    use_fused_forward(model)
    return model


@contextmanager
def _peft_deprecation_ignored() -> Iterator[None]:
    """Wrapping a model, peft reads `is_gradient_checkpointing`, which transformers 5 deprecates with a FutureWarning:
    peft's business, not the user's, so it is silenced for that call alone."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield


def is_lora(model: torch.nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


@contextmanager
def adapter_disabled(model: PeftModel) -> Iterator[PeftModel]:
    """Run `model` as its base model for the duration (the adapter is re-enabled after, even on error)."""
    with model.disable_adapter():
        yield model


def save_adapter(model: PeftModel, path: str | Path) -> Path:
    """Write the adapter alone (adapter_config.json + weights), loadable by `PeftModel.from_pretrained(base, path)`."""
    model.save_pretrained(str(path))
    return Path(path)


def merged_copy(model: PeftModel) -> PreTrainedModel:
    """A plain transformers model with the adapter folded into its weights; `model` itself is left unchanged."""
    import copy

    # merge_and_unload rewrites the wrapped modules in place, so merge a copy: the caller may keep training `model`.
    return copy.deepcopy(model).merge_and_unload()
