"""What a training forward pass keeps for backward: the bytes autograd saves, by module, per token and decoder layer.

    python benchmarks/saved_activations.py --mode lora --tokens 400
    python benchmarks/saved_activations.py --mode full --tokens 400

One sequence of `--tokens` tokens through the model in train mode, with the settings `trainers_vs_trl.py` trains with
(LoRA r=16 on q, k, v, o with dropout 0.05 on every block, or every weight trainable). Every tensor autograd saves is
counted once (tensors sharing storage are one), parameters are left out (they are resident anyway), and each is put
down to the module whose forward was running when it was saved, named within its decoder layer (`mlp.act_fn`, ...).
Nothing here depends on the token values, so the ids are drawn at random. It prints MiB and fp32 values per token and
layer for each module, and the total: the activation memory a step keeps for each sequence unless it recomputes.
"""

from __future__ import annotations

import argparse
import collections
import re
from typing import Any

import torch
from trainer_runs import LORA

from prefalign.models.loading import load_model
from prefalign.models.lora import apply_lora

_WRAPPERS = {"base_model", "model", "base_layer", "default"}  # peft's and transformers' nesting, not modules of note


def module_label(name: str) -> str:
    """`base_model.model.model.layers.3.self_attn.q_proj.base_layer` -> `self_attn.q_proj`; outside the layers, the
    last part of the name (`norm`, `lm_head`)."""
    match = re.search(r"layers\.\d+\.(.*)", name)
    if match is None:
        parts = [part for part in name.split(".") if part and part not in _WRAPPERS]
        return parts[-1] if parts else "(model)"
    return ".".join(part for part in match.group(1).split(".") if part not in _WRAPPERS)


def saved_bytes_by_module(model: torch.nn.Module, input_ids: torch.Tensor) -> collections.Counter[str]:
    """Bytes of the distinct non-parameter storages autograd saves during one forward of `model`, by module label."""
    running = ["(model)"]

    def leave(_module: torch.nn.Module, _args: Any, _output: Any) -> None:
        running.pop()  # returns None: the module's output stays as it is

    for name, module in model.named_modules():
        label = module_label(name)
        module.register_forward_pre_hook(lambda _m, _a, label=label: running.append(label))
        module.register_forward_hook(leave)
    counted = {param.untyped_storage().data_ptr() for param in model.parameters()}
    by_module: collections.Counter[str] = collections.Counter()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in counted:
            counted.add(storage.data_ptr())
            by_module[running[-1]] += storage.nbytes()
        return tensor

    def unpack(tensor: Any) -> Any:
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        model(input_ids=input_ids, use_cache=False)
    return by_module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--mode", choices=["lora", "full"], default="lora")
    parser.add_argument("--tokens", type=int, default=400, help="the sequence's length")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = load_model(args.model, dtype=torch.float32, device="cpu")
    if args.mode == "lora":
        model = apply_lora(
            model, rank=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"], target_modules=LORA["targets"]
        )
    model.train()
    layers = model.config.num_hidden_layers
    input_ids = torch.randint(100, model.config.vocab_size, (1, args.tokens))
    by_module = saved_bytes_by_module(model, input_ids)
    total = sum(by_module.values())
    per_value = args.tokens * layers * 4  # fp32 values per token and layer
    print(f"{args.mode}, {args.tokens} tokens, {layers} layers: {total / 2**20:.1f} MiB saved for backward")
    print(f"{'module':<28} {'MiB':>8} {'values/token/layer':>20}")
    for label, size in by_module.most_common():
        print(f"{label:<28} {size / 2**20:8.1f} {size / per_value:20.0f}")
    print(f"{'total':<28} {total / 2**20:8.1f} {total / per_value:20.0f}")


if __name__ == "__main__":
    main()
