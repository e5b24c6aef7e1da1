"""A LoRA layer's forward in two fused steps instead of peft's four (`models.lora.apply_lora` installs it).

peft computes base(x) + B(A(dropout(x))) * s as four passes over [tokens, out]-sized tensors in training: the base
output, B's output, its product with s, and the sum (and autograd keeps a product's backward for the multiply). Here
the low-rank term is accumulated into the base output in place by one matrix product, `addmm_(h, B^T, alpha=s)`,
which BLAS computes as C <- C + s * h B^T: the same sum, with B's output and the product never stored. With
`FastDropout` on a CPU, the dropout's 1 / (1 - p) is folded into s as well (A is linear, so A(m * x / (1 - p)) * s =
A(m * x) * (s / (1 - p))), which saves a pass over x. Values equal peft's up to float rounding; the random draws are
the same. The in-place add is legal under autograd: a linear layer's backward needs its input, not its output.

Anything else (adapter disabled or merged, several or mixed adapters, DoRA and other variants, a bias on B, extra
arguments, autocast, mismatched dtypes) runs peft's own forward.
"""

from __future__ import annotations

import types
from typing import Any

import torch

from .dropout import FastDropout


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """`forward` of a peft `lora.Linear` (bound to it by `use_fused_forward`)."""
    adapter = _plain_adapter(self, x, args, kwargs)
    if adapter is None:
        return type(self).forward(self, x, *args, **kwargs)
    lora_a, lora_b = self.lora_A[adapter].weight, self.lora_B[adapter].weight
    dropout, scaling = self.lora_dropout[adapter], self.scaling[adapter]
    if isinstance(dropout, FastDropout) and dropout.training and x.device.type == "cpu":
        dropped, scaling = dropout.masked(x), scaling * dropout.scale
    else:
        dropped = dropout(x)
    result = self.base_layer(x).contiguous()  # a no-op: a linear layer's output is contiguous
    low_rank = torch.nn.functional.linear(dropped, lora_a)
    result.view(-1, result.shape[-1]).addmm_(low_rank.reshape(-1, low_rank.shape[-1]), lora_b.t(), alpha=scaling)
    return result


def _plain_adapter(layer: Any, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The name of the one active adapter when the fused forward computes what peft's would, else None."""
    if args or kwargs or layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    adapter = layer.active_adapters[0]
    if adapter not in layer.lora_A or adapter in getattr(layer, "lora_variant", {}):
        return None
    if layer.lora_B[adapter].bias is not None or torch.is_autocast_enabled(x.device.type):
        return None
    base = layer.get_base_layer()
    if type(base) is not torch.nn.Linear:
        return None
    if not (x.dtype == base.weight.dtype == layer.lora_A[adapter].weight.dtype == layer.lora_B[adapter].weight.dtype):
        return None
    return adapter


def use_fused_forward(model: torch.nn.Module) -> int:
    """Give every peft LoRA `Linear` of `model` the fused forward; returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    fused = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.forward = types.MethodType(_fused_forward, module)
            fused += 1
    return fused
