"""Choosing the next token: greedy, or temperature + top-p sampling that inverts each row's CDF at its own draw.

Every prompt draws its uniforms from its own generator (`prompt_uniforms`), seeded from the run's seed and a stable
hash of the prompt's text, one draw per decoding step. A row's token therefore depends on its logits and its own draw
only, never on which other prompts share its batch.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from ..data.records import Text

if TYPE_CHECKING:
    import torch

# Top-p sampling sorts only this many candidates when they already hold the top-p mass (rows whose head is flatter
# than that take the full sort). The kept set and the CDF over it are the same either way.
TOP_P_CANDIDATES = 256


def prompt_seed(seed: int, prompt: Text) -> int:
    """The seed of `prompt`'s own random stream: a stable (cross-process, cross-machine) hash of (seed, prompt)."""
    key = json.dumps([seed, prompt], ensure_ascii=False, sort_keys=True)
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little") & ((1 << 63) - 1)


def prompt_uniforms(seed: int, prompt: Text, count: int) -> torch.Tensor:
    """`count` draws in [0, 1) from the prompt's own generator: one per decoding step."""
    import torch  # loaded on first use: importing prefalign (and `--help`) stays fast

    generator = torch.Generator().manual_seed(prompt_seed(seed, prompt))
    return torch.rand(count, generator=generator)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, uniforms: torch.Tensor | None) -> torch.Tensor:
    """Next token per row of `logits` (rows, vocab): argmax when `temperature == 0`, else temperature + top-p sampling.

    Top-p keeps the smallest head of the ranking whose mass reaches `top_p` (a token is kept while the mass ranked
    before it is below `top_p`), renormalised. The row's uniform draw picks the token where the CDF over the kept
    tokens, in ranking order, first exceeds draw * kept mass.
    """
    import torch

    if temperature == 0:
        return logits.argmax(dim=-1)
    assert uniforms is not None, "sampling needs one uniform draw per row"
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    uniforms = uniforms.to(probs)
    if top_p >= 1:
        return _invert_cdf(probs, uniforms)
    candidates = min(TOP_P_CANDIDATES, probs.shape[-1])
    head, order = probs.topk(candidates, dim=-1)  # sorted, largest first
    covered = head.sum(dim=-1) >= top_p  # the kept set lies within the head
    tokens = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    if covered.any():
        tokens[covered] = _sample_ranked(head[covered], order[covered], top_p, uniforms[covered])
    if not covered.all():
        flat = ~covered
        ranked, full_order = probs[flat].sort(dim=-1, descending=True)
        tokens[flat] = _sample_ranked(ranked, full_order, top_p, uniforms[flat])
    return tokens


def _sample_ranked(ranked: torch.Tensor, order: torch.Tensor, top_p: float, uniforms: torch.Tensor) -> torch.Tensor:
    """Top-p sampling over probabilities `ranked` (largest first; `order` maps their columns to token ids)."""
    kept = ranked.masked_fill(ranked.cumsum(dim=-1) - ranked >= top_p, 0.0)
    return order.gather(-1, _invert_cdf(kept, uniforms).unsqueeze(-1)).squeeze(-1)


def _invert_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Per row, the column where the cumulative `weights` first exceed uniform * total."""
    cdf = weights.cumsum(dim=-1)
    total = cdf[:, -1:]
    # Clamped strictly below the total so the search always lands on a column with non-zero weight.
    import torch

    target = torch.minimum(uniforms.unsqueeze(-1) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)
