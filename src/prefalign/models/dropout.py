"""`FastDropout`: LoRA's input dropout with a cheaper draw on a CPU (`models.lora.use_fast_dropout` installs it)."""

from __future__ import annotations

import torch


class FastDropout(torch.nn.Module):
    """Dropout with the same independent Bernoulli mask as `nn.Dropout`, its drop probability rounded to a multiple of
    1/65536 (0.05 becomes 3277/65536 = 0.050003) and the kept values scaled by exactly 1 / (1 - that), so the output's
    expectation is still the input.

    Why: a CPU draws one random number per element for `nn.Dropout`, and with an adapter on every linear layer those
    draws are a large share of a LoRA step (README, Performance). Here each 64-bit draw gives four 16-bit uniforms,
    and the mask kept for backward is bool, not fp32. The draws come from torch's global generator, so a seeded or
    resumed run repeats its masks. On CUDA, `nn.Dropout`'s fused kernel runs as is.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0 < p < 1:
            raise ValueError(f"dropout probability must be in (0, 1), got {p}")
        self.p = p
        self.dropped = max(1, round(p * 65536))  # of the 65536 values of a 16-bit uniform, those that drop
        self.scale = 65536 / (65536 - self.dropped)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if x.device.type != "cpu":
            return torch.nn.functional.dropout(x, self.p, training=True)
        return self.masked(x).mul_(self.scale)

    def masked(self, x: torch.Tensor) -> torch.Tensor:
        """x with the dropped values zeroed and the kept ones NOT scaled (a CPU tensor, in training): `forward` is
        `masked(x) * scale`. A caller that multiplies by a constant after a linear map anyway (LoRA's scaling) folds
        `scale` into that constant and saves a pass over x. Draws the same random numbers as `forward`."""
        words = torch.randint(-(2**63), 2**63 - 1, ((x.numel() + 3) // 4,), dtype=torch.int64)
        uniform = words.view(torch.int16)[: x.numel()].view(x.shape)  # each of the 65536 values equally likely
        return x.mul(uniform >= -32768 + self.dropped)

    def extra_repr(self) -> str:
        return f"p={self.dropped}/65536"
