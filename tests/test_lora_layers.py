"""`--lora-layers N`: only the last N blocks get adapters, and the backward pass stops below them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prefalign.errors import ModelError, PrefalignError
from prefalign.models.loading import load_model
from prefalign.models.lora import apply_lora
from prefalign.train.config import DPOConfig


def test_only_the_last_blocks_get_adapters_and_gradients_stop_below_them(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir))
    total = model.config.num_hidden_layers
    assert total >= 2
    peft_model = apply_lora(model, rank=2, alpha=4.0, dropout=0.0, target_modules=["all-linear"], last_layers=1)
    adapted = {name.split(".layers.")[1].split(".")[0] for name, p in peft_model.named_parameters() if p.requires_grad}
    assert adapted == {str(total - 1)}
    # Record which blocks see a gradient flowing back: only the adapted last one.
    reached: list[int] = []
    blocks = peft_model.get_base_model().model.layers
    for index, block in enumerate(blocks):
        block.register_full_backward_hook(lambda module, gin, gout, index=index: reached.append(index))
    for parameter in peft_model.parameters():  # make B non-zero so the adapter changes the output
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter, std=0.1)
    out = peft_model(input_ids=torch.tensor([[5, 6, 7, 8]]))
    out.logits.sum().backward()
    assert reached == [total - 1]


def test_lora_layers_is_checked(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir))
    with pytest.raises(ModelError, match="--lora-layers must be between 1 and"):
        apply_lora(model, rank=2, alpha=4.0, dropout=0.0, target_modules=["all-linear"], last_layers=99)
    with pytest.raises(PrefalignError, match="--lora-layers applies to a LoRA adapter"):
        DPOConfig(model="m", data="d", output_dir="o", lora_layers=2)
