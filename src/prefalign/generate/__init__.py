"""The one generation path: continuous batching over a KV cache of row slots, with per-prompt reproducible sampling.

Preference-pair building and evaluation both generate through `generate()`. We decode with our own loop rather than
HF `generate` for two reasons. Sampling must be reproducible per prompt: each prompt draws its random numbers from its
own generator, seeded from `config.seed` and a stable hash of the prompt's text, so a prompt's sample does not depend on
which other prompts share its batch or on their order, and a run resumed after a kill reproduces the same outputs.
(The logits themselves can differ in the last float bits between batch shapes, so an exact tie can still flip; that
is a property of the kernels, not of the sampling.) And the batch stays full: a prompt that finishes hands its slot
to the next waiting one (`decode.ContinuousBatch`), instead of the batch draining while its longest answer finishes.
Two identical prompts in one call get the same sample: to draw several samples per prompt, call again with another
seed.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..console import progress_bar
from ..data.records import Text
from ..data.tokenize import PromptFormat, prompt_token_ids
from ..errors import PrefalignError
from ..models.loading import stop_token_ids
from .prefills import PromptPrefills
from .sampling import prompt_seed, prompt_uniforms, sample_next

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .decode import Decoded

__all__ = [
    "GENERATION_DTYPES",
    "Generation",
    "GenerationConfig",
    "GenerationDtype",
    "PromptPrefills",
    "generate",
    "prompt_seed",
    "sample_next",
]

GenerationDtype = Literal["model", "auto", "float32", "bfloat16"]
GENERATION_DTYPES: tuple[GenerationDtype, ...] = ("model", "auto", "float32", "bfloat16")


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
    dtype: GenerationDtype = field(
        default="model",
        metadata={
            "help": "precision of the forward passes: model (as loaded), float32, bfloat16, or auto (bfloat16 where "
            "the device computes it faster: a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX whose bf16 matrix "
            "products measure at least 1.25x its fp32 rate; else as loaded)"
        },
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
        if self.dtype not in GENERATION_DTYPES:
            raise PrefalignError(f"dtype must be one of {', '.join(GENERATION_DTYPES)}, got {self.dtype!r}")


@dataclass(frozen=True)
class Generation:
    """One prompt's completion.

    `token_ids` are the generated tokens, ending with the stop token when `finish_reason` is "eos" ("length": the
    `max_new_tokens` budget ran out first). `text` is their decoding without special tokens, stripped. Generated with
    a reference model, `kl` and `logratio` are the sums along the answer of the exact next-token KL(model ||
    reference) and of log model(token) - log reference(token), in nats.
    """

    text: str
    token_ids: list[int]
    finish_reason: Literal["eos", "length"]
    num_tokens: int
    kl: float | None = None
    logratio: float | None = None


def resolve_dtype(model: PreTrainedModel, dtype: GenerationDtype) -> torch.dtype:
    """The dtype `generate` runs `model` in under the `dtype` setting."""
    import torch

    from ..models.precision import fast_bf16

    if dtype == "float32":
        return torch.float32
    if dtype == "bfloat16" or (dtype == "auto" and fast_bf16(model.device)):
        return torch.bfloat16
    return model.dtype


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Text],
    config: GenerationConfig,
    *,
    reference: PreTrainedModel | None = None,
    progress: bool = True,
    prefills: PromptPrefills | None = None,
    reference_prefills: PromptPrefills | None = None,
) -> list[Generation]:
    """Complete every prompt (a string, or chat messages) and return the generations in the prompts' order.

    Prompts are tokenized by `prompt_token_ids` according to `config.prompt_format` and decoded `config.batch_size` at
    a time, longest first (so running out of memory shows up at once, and a joining prompt never needs more columns
    than the rows it joins). With `reference` (a model with the same vocabulary), each generation also carries its
    KL from the reference (see `Generation`), the reference decoding the same tokens alongside.

    `prefills` (and `reference_prefills`, the reference's) keep the prompts' prefills for a later call of the same
    model and take them from an earlier one (`PromptPrefills`).
    """
    import torch

    from .attention import upcast_attention
    from .decode import ContinuousBatch, DecodeSettings

    if not prompts:
        return []
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop_ids or [0])[0]

    def encode(prompt: Text) -> list[int]:
        return prompt_token_ids(prompt, tokenizer, config.prompt_format)

    encoded = [encode(prompt) for prompt in prompts]
    for index, ids in enumerate(encoded):
        if not ids:
            raise PrefalignError(f"prompt {index + 1} is empty: there is nothing to continue")
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    settings = DecodeSettings(
        config.max_new_tokens, config.temperature, config.top_p, min(config.batch_size, len(prompts)), stop_ids, pad_id
    )

    def draws(position: int) -> torch.Tensor:
        return prompt_uniforms(config.seed, prompts[order[position]], config.max_new_tokens)

    dtype = resolve_dtype(model, config.dtype)
    for kept, owner in ((prefills, model), (reference_prefills, reference)):
        if kept is not None and owner is not None:
            kept.bind(owner, dtype, encode)
    with (
        torch.inference_mode(),
        _generation_model(model, dtype) as sampler,
        _generation_model(reference, dtype) as follower,
        upcast_attention(sampler),
        upcast_attention(follower),
        progress_bar(total=len(prompts), unit="prompt", desc="generating", disable=not progress) as bar,
    ):
        batch = ContinuousBatch(
            sampler,
            [encoded[i] for i in order],
            draws if config.temperature > 0 else None,
            settings,
            follower,
            [prefills, reference_prefills],
        )
        started = time.perf_counter()

        def done(position: int) -> None:
            # Every token generated so far, in-flight rows included: counting finished answers only reads far too low
            # while the first rows are still decoding.
            generated = sum(map(len, batch.generated))
            bar.update(1)
            bar.set_postfix(tok_per_s=f"{generated / (time.perf_counter() - started):.0f}", refresh=False)

        decoded = batch.run(done)
    return _in_prompt_order(tokenizer, stop_ids, order, decoded)


def _in_prompt_order(
    tokenizer: PreTrainedTokenizerBase, stop_ids: list[int], order: list[int], decoded: list[Decoded]
) -> list[Generation]:
    """The `Generation` of each decoded answer, put back in the prompts' order (`order[i]`: decoded[i]'s prompt)."""
    results: list[Generation | None] = [None] * len(order)
    for position, out in zip(order, decoded):
        ids = out.token_ids
        finished = bool(ids) and ids[-1] in stop_ids
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        results[position] = Generation(text, ids, "eos" if finished else "length", len(ids), out.kl, out.logratio)
    return results  # type: ignore[return-value]  # every position was filled above


class _generation_model:
    """`model` in eval mode (no dropout, even when called from a training run) and in `dtype`: itself when it already
    is, else a converted copy for the duration (the caller's weights are never rounded)."""

    def __init__(self, model: PreTrainedModel | None, dtype: torch.dtype) -> None:
        self.model, self.dtype = model, dtype

    def __enter__(self) -> PreTrainedModel | None:
        model = self.model
        if model is None:
            return None
        self.was_training = model.training
        model.eval()
        if model.dtype != self.dtype:
            return copy.deepcopy(model).to(self.dtype)
        return model

    def __exit__(self, *exc: object) -> None:
        if self.model is not None:
            self.model.train(self.was_training)
