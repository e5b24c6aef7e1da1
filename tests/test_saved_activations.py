"""`benchmarks/saved_activations.py`: what it counts as a forward pass's saved activations, on the tiny model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from prefalign.models.loading import load_model
from prefalign.models.lora import apply_lora

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling trainer_runs
    try:
        spec = importlib.util.spec_from_file_location("saved_activations", BENCHMARKS / "saved_activations.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_module_labels_are_named_within_their_decoder_layer() -> None:
    label = _script().module_label
    assert label("base_model.model.model.layers.3.self_attn.q_proj.base_layer") == "self_attn.q_proj"
    assert label("model.layers.12.mlp.act_fn") == "mlp.act_fn"
    assert label("base_model.model.model.norm") == "norm"
    assert label("") == "(model)"


def test_saved_bytes_grow_with_the_tokens_and_leave_out_frozen_weights(tiny_model_dir: Path) -> None:
    script = _script()
    torch.manual_seed(0)
    model = apply_lora(
        load_model(str(tiny_model_dir), dtype=torch.float32, device="cpu"),
        rank=4,
        alpha=8.0,
        dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    model.train()
    config = model.config
    short = script.saved_bytes_by_module(model, torch.randint(5, config.vocab_size, (1, 8)))
    long = script.saved_bytes_by_module(model, torch.randint(5, config.vocab_size, (1, 16)))
    assert {label: 2 * size for label, size in short.items()} == dict(long)  # every saved tensor is per token
    per_token_layer = 8 * config.num_hidden_layers * 4  # fp32 bytes of one value per token and layer
    assert short["mlp.act_fn"] == config.intermediate_size * per_token_layer  # SiLU keeps its input
    assert "mlp.gate_proj" not in short and "mlp.down_proj" not in short  # frozen: they keep nothing
    assert short["self_attn.q_proj"] > config.hidden_size * per_token_layer  # the LoRA input after dropout, and more
