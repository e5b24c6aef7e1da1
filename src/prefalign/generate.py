"""The one generation path: batched, KV-cached decoding with per-prompt reproducible sampling.

Preference-pair building and evaluation both generate through `generate()`. We decode with our own short loop rather
than HF `generate` because sampling must be reproducible per prompt: each prompt draws its random numbers from its own
generator, seeded from `config.seed` and a stable hash of the prompt's text. A prompt's sample therefore does not depend
on which other prompts share its batch or on their order, so a run resumed after a kill reproduces the same outputs.
(The logits themselves can differ in the last float bits between batch shapes, so an exact tie can still flip; that is
a property of the kernels, not of the sampling.) Two identical prompts in one call get the same sample: to draw several
samples per prompt, call again with another seed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .console import progress_bar
from .data.records import Text
from .data.tokenize import PromptFormat, prompt_token_ids
from .errors import PrefalignError
from .models.loading import stop_token_ids

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class GenerationConfig:
    """How to generate. `temperature == 0` is greedy decoding (top_p and seed are then unused)."""

    max_new_tokens: int = field(default=256, metadata={"help": "most new tokens generated for one prompt"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature; 0 means greedy decoding"})
    top_p: float = field(
        default=1.0, metadata={"help": "nucleus sampling: sample among the most likely tokens whose mass reaches top_p"}
    )
    seed: int = field(default=0, metadata={"help": "sampling seed, combined with a hash of each prompt's text"})
    batch_size: int = field(default=16, metadata={"help": "prompts decoded together"})
    prompt_format: PromptFormat = field(
        default="auto",
        metadata={"help": "chat: apply the chat template; raw: use the text as is; auto: chat if the model has one"},
    )

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise PrefalignError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise PrefalignError(f"temperature must be a number >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise PrefalignError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise PrefalignError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.prompt_format not in ("auto", "chat", "raw"):
            raise PrefalignError(f"prompt_format must be auto, chat or raw, got {self.prompt_format!r}")


@dataclass(frozen=True)
class Generation:
    """One prompt's completion.

    `token_ids` are the generated tokens, ending with the stop token when `finish_reason` is "eos" ("length": the
    `max_new_tokens` budget ran out first). `text` is their decoding without special tokens, stripped.
    """

    text: str
    token_ids: list[int]
    finish_reason: Literal["eos", "length"]
    num_tokens: int


def prompt_seed(seed: int, prompt: Text) -> int:
    """The seed of `prompt`'s own random stream: a stable (cross-process, cross-machine) hash of (seed, prompt)."""
    key = json.dumps([seed, prompt], ensure_ascii=False, sort_keys=True)
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little") & ((1 << 63) - 1)


def _uniforms(seed: int, prompt: Text, count: int) -> torch.Tensor:
    """`count` draws in [0, 1) from the prompt's own generator: one per decoding step."""
    import torch

    generator = torch.Generator().manual_seed(prompt_seed(seed, prompt))
    return torch.rand(count, generator=generator)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, uniforms: torch.Tensor | None) -> torch.Tensor:
    """Next token per row of `logits` (rows, vocab): argmax when `temperature == 0`, else temperature + top-p sampling.

    Sampling inverts each row's CDF at that row's own uniform draw (`uniforms`, one per row), so a row's token depends
    on its logits and its draw only.
    """
    import torch

    if temperature == 0:
        return logits.argmax(dim=-1)
    assert uniforms is not None, "sampling needs one uniform draw per row"
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    order = None
    if top_p < 1:
        probs, order = probs.sort(dim=-1, descending=True)
        # Keep a token while the mass before it is below top_p: the smallest head of the ranking that reaches top_p.
        probs = probs.masked_fill(probs.cumsum(dim=-1) - probs >= top_p, 0.0)
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    # Clamped strictly below the total so the search always lands on a token with non-zero probability.
    target = torch.minimum(uniforms.to(cdf).unsqueeze(-1) * total, torch.nextafter(total, torch.zeros_like(total)))
    choice = torch.searchsorted(cdf, target, right=True)
    return (choice if order is None else order.gather(-1, choice)).squeeze(-1)


def _decode_batch(
    model: PreTrainedModel,
    prompts: list[list[int]],
    uniforms: torch.Tensor | None,
    config: GenerationConfig,
    stop_ids: list[int],
    pad_id: int,
) -> list[list[int]]:
    """Generate for prompts of any lengths at once; returns each row's new tokens (ending at its stop token)."""
    import torch

    device = model.device
    rows, width = len(prompts), max(len(p) for p in prompts)
    # Left padding: every row's last prompt token sits in the last column, so each step appends one column to all rows.
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((rows, width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    # Positions count real tokens only, so a padded row sees the same positions as it would alone.
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    stop = torch.tensor(stop_ids, dtype=torch.long, device=device)
    uniforms = uniforms.to(device) if uniforms is not None else None
    # The prefill needs the last position's logits only, not (rows, width, vocab). Every transformers causal LM takes
    # `logits_to_keep`; a custom (remote-code) model may not. A PEFT wrapper passes it on to the model it wraps.
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    parameters = inspect.signature(core.forward).parameters
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    # transformers renamed the KV cache argument and output field `past_key_values` -> `cache` (5.x) and warns on the
    # old name; a model whose forward still takes only the old name gets that one.
    cache_name = "cache" if "cache" in parameters else "past_key_values"
    # `active[i]` is the input row that batch row i decodes. A row that emits a stop token leaves the batch (and its
    # KV cache) at once, so the steps after it cost only what the unfinished rows need: responses differ in length,
    # and without this a batch decodes as long as its longest answer at full width.
    active = torch.arange(rows, device=device)
    generated: list[list[int]] = [[] for _ in range(rows)]
    cache, tokens = None, input_ids
    for step in range(config.max_new_tokens):
        out = model(
            input_ids=tokens,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{cache_name: cache},
            **keep_last,
        )
        cache = out[cache_name]
        step_uniforms = uniforms[active, step] if uniforms is not None else None
        next_tokens = sample_next(out.logits[:, -1, :], config.temperature, config.top_p, step_uniforms)
        for row, token in zip(active.tolist(), next_tokens.tolist()):
            generated[row].append(token)
        finished = torch.isin(next_tokens, stop)
        if finished.all():
            break
        if finished.any():
            keep = (~finished).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            active, next_tokens = active[keep], next_tokens[keep]
            attention_mask, position_ids = attention_mask[keep], position_ids[keep]
        tokens = next_tokens.unsqueeze(-1)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(active), 1)], dim=-1)
        position_ids = position_ids[:, -1:] + 1
    return generated


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Text],
    config: GenerationConfig,
    *,
    progress: bool = True,
) -> list[Generation]:
    """Complete every prompt (a string, or chat messages) and return the generations in the prompts' order.

    Prompts are tokenized by `prompt_token_ids` according to `config.prompt_format`, decoded in batches of similar
    length (longest first, so running out of memory shows up at once), and put back in input order.
    """
    import torch

    if not prompts:
        return []
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop_ids or [0])[0]
    encoded = [prompt_token_ids(prompt, tokenizer, config.prompt_format) for prompt in prompts]
    for index, ids in enumerate(encoded):
        if not ids:
            raise PrefalignError(f"prompt {index + 1} is empty: there is nothing to continue")
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    sampling = config.temperature > 0
    results: dict[int, Generation] = {}
    new_tokens, started = 0, time.perf_counter()
    was_training = model.training
    model.eval()  # no dropout while generating, even when called from inside a training run
    try:
        with (
            torch.inference_mode(),
            progress_bar(total=len(prompts), unit="prompt", desc="generating", disable=not progress) as bar,
        ):
            for start in range(0, len(order), config.batch_size):
                batch = order[start : start + config.batch_size]
                uniforms = (
                    torch.stack([_uniforms(config.seed, prompts[i], config.max_new_tokens) for i in batch])
                    if sampling
                    else None
                )
                outputs = _decode_batch(model, [encoded[i] for i in batch], uniforms, config, stop_ids, pad_id)
                for index, ids in zip(batch, outputs):
                    finished = bool(ids) and ids[-1] in stop_ids
                    text = tokenizer.decode(ids, skip_special_tokens=True).strip()
                    results[index] = Generation(text, ids, "eos" if finished else "length", len(ids))
                    new_tokens += len(ids)
                bar.update(len(batch))
                bar.set_postfix(tok_per_s=f"{new_tokens / (time.perf_counter() - started):.0f}")
    finally:
        model.train(was_training)
    return [results[i] for i in range(len(prompts))]
