"""Attention for preference pairs laid end to end in ONE row with no padding: [p1 c1 r1 | p2 c2 r2 | ...].

The model's projections, norms and MLPs see a [1, T] row of real tokens only; attention alone must know where the
pairs are. It runs per pair, two `scaled_dot_product_attention` calls each:

* prompt + chosen: plain causal attention over that span (`is_causal=True`, so the kernel skips the upper triangle);
* rejected: its queries attend to the prompt's keys and causally to its own, never to chosen's: keys [prompt |
  rejected] under a lower-right causal mask (`tril(diagonal=len(prompt))`).

A span may carry more than two responses (`collate_prompt_groups`: one prompt and all its answers, for a reward model
scoring several models' answers): every response after the first runs as rejected does, on its own keys and the
prompt's.

That is exactly the block mask of `prefalign.data.shared_prefix.block_mask`, but computed without the masked-out
blocks: a packed row of L tokens costs L^2 per head under a 4D mask, whatever share of it the mask keeps; here each
pair costs only its own causal blocks, and no padding is computed anywhere.

The spans travel with the forward call as the keyword argument `SPANS_KWARG`, which transformers hands through the
model and each decoder layer to the attention function (gradient checkpointing keeps it for the recompute too). The
function is registered with transformers' `AttentionInterface` as `ATTENTION_NAME`: plain SDPA whenever a call
carries no spans, so generation and every other use of the model are unchanged. Switching a model to it, after
checking that it scores a toy batch as the 4D-mask layout does, is `prefalign.scoring.run.enable_pair_attention`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.shared_prefix import SPANS_KWARG, PairSpans

ATTENTION_NAME = "prefalign_pairs"


def pair_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers' attention-function signature: query [1, H, T, D], key and value [1, KV, T, D]; returns the
    output as [1, T, H, D]. Without spans in `kwargs`, transformers' own SDPA attention."""
    spans: PairSpans | None = kwargs.pop(SPANS_KWARG, None)
    if spans is None:
        # transformers is imported on first use here and below: importing it takes seconds.
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if query.shape[0] != 1:
        raise ValueError(f"pair attention takes one row; got {query.shape[0]}")
    options = {
        "scale": scaling,
        "dropout_p": dropout if module.training else 0.0,
        "enable_gqa": key.shape[1] != query.shape[1],
    }
    pieces = []
    queries, keys, values = (_span_pieces(tensor, spans) for tensor in (query, key, value))
    for _start, prompt, _first, *others in spans:
        shared_keys, shared_values = next(keys), next(values)
        pieces.append(
            F.scaled_dot_product_attention(next(queries), shared_keys, shared_values, is_causal=True, **options)
        )
        for length in others:  # rejected, or a prompt's every further response
            own_keys = torch.cat([shared_keys[:, :, :prompt], next(keys)], dim=2)
            own_values = torch.cat([shared_values[:, :, :prompt], next(values)], dim=2)
            # Its token i sees every prompt key and its own keys 0..i: column c is kept when c <= i + prompt.
            mask = torch.ones(length, prompt + length, dtype=torch.bool, device=query.device).tril(diagonal=prompt)
            pieces.append(
                F.scaled_dot_product_attention(next(queries), own_keys, own_values, attn_mask=mask, **options)
            )
    out = torch.cat(pieces, dim=2)
    return out.transpose(1, 2).contiguous(), None


def _span_pieces(tensor: Tensor, spans: PairSpans) -> Iterator[Tensor]:
    """`tensor` [1, heads, T, D] split along T into each span's [prompt | first response] and its further responses,
    in order. One split, not a slice per piece: the backward of a split concatenates the pieces' gradients once,
    where each slice's backward would fill a zero tensor the size of the whole row."""
    sizes, end = [], 0
    for start, prompt, first, *others in spans:
        if start != end:
            raise ValueError(f"pair spans must tile the row: a span starts at {start}, the one before ended at {end}")
        sizes += [prompt + first, *others]
        end = start + prompt + first + sum(others)
    if end != tensor.shape[2]:
        raise ValueError(f"pair spans cover {end} positions of a {tensor.shape[2]}-token row")
    return iter(tensor.split(sizes, dim=2))


def register() -> None:
    """Make `ATTENTION_NAME` known to transformers (idempotent): the function above, and SDPA's mask builder."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, pair_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
