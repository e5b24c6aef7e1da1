"""Step 2 of the evaluation: everything that needs a model's forward passes (greedy answers, KL samples, held-out
pair log-probs), each model loaded at most once and not at all when its results are cached; and the precision
those passes run at."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..data.records import PreferenceRecord, Text
from ..generate import Generation, GenerationConfig, PromptPrefills
from .cache import GenerationCache, ResultCache, decoding_settings, prompt_key
from .config import EvalConfig
from .implicit_reward import PairLogps, pair_logps
from .kl import KLEstimate, kl_from_base, same_vocabulary
from .models import EvalModel
from .prompt_set import EvalPrompt


def model_pass(
    config: EvalConfig,
    models: dict[str, EvalModel],
    cache: GenerationCache,
    prompts: list[EvalPrompt],
    pairs: list[PreferenceRecord] | None,
    timings: dict[str, float],
    notes: list[str],
    progress: bool,
    say: Callable[[str], None],
) -> tuple[dict[str, list[Generation]], dict[str, KLEstimate], dict[str, PairLogps]]:
    """Step 2: everything that needs a model's forward passes, each model loaded at most once (none when cached)."""
    results = ResultCache(config.cache_root)
    texts = [p.prompt for p in prompts]
    base = models[config.base_label]
    kl_config = replace(config.generation, temperature=1.0, top_p=1.0, max_new_tokens=config.kl_max_new_tokens)
    kl_texts = texts[: config.kl_prompts]
    # Models after the reference, and the reference: none without held-out pairs (implicit_reward_labels is empty).
    pair_labels = set(config.implicit_reward_labels)
    if pair_labels and config.reference_label is not None:
        pair_labels.add(config.reference_label)
    generations, kl, logps = {}, {}, {}
    kl_keys = {
        label: _kl_key(model, base, config, kl_config, kl_texts)
        for label, model in models.items()
        if config.kl_samples and model is not base
    }
    kl_done = {label: results.get(key) for label, key in kl_keys.items()}
    # A model's KL pass prefills the prompts its greedy pass prefilled, and the base's, which the base's own pass (or
    # the previous model's KL pass) did: those are kept in memory, for the KL prompts only, one model's at a time.
    needed = [label for label, stored in kl_done.items() if stored is None]
    base_prefills = PromptPrefills(keep=kl_texts) if needed else None
    for label, model in models.items():
        if model is base:
            prefills = base_prefills
        else:
            prefills = PromptPrefills(keep=kl_texts) if label in needed else None
        t = time.perf_counter()
        generations[label] = cache.generate(model, texts, config.generation, progress=progress, prefills=prefills)
        say(f"{label}: {cache.generated.get(label, 0)} answers generated, {cache.cached.get(label, 0)} from the cache")
        timings[f"generate/{label}"] = time.perf_counter() - t
        if label in kl_done:
            t = time.perf_counter()
            stored = kl_done[label]
            if stored is not None:
                kl[label] = KLEstimate(**stored)
            elif not same_vocabulary(model.tokenizer, base.tokenizer):
                notes.append(f"no KL for {label}: its tokenizer differs from {base.label}'s")
            else:
                kl[label] = kl_from_base(
                    model, base, kl_texts, kl_config, config.kl_samples, progress, (prefills, base_prefills)
                )
                results.put(kl_keys[label], dataclasses.asdict(kl[label]))
            timings[f"kl/{label}"] = time.perf_counter() - t
        if label in pair_labels and pairs is not None:
            t = time.perf_counter()
            logps[label] = _pair_logps(config, model, pairs, results)
            timings[f"pair_logps/{label}"] = time.perf_counter() - t
        if model is not base:
            model.release()
    base.release()
    if config.kl_samples and len(models) > 1:
        say(
            f"KL from {base.label}: {config.kl_samples} samples per prompt on {len(kl_texts)} prompts, "
            f"up to {config.kl_max_new_tokens} tokens"
        )
    return generations, kl, logps


def _kl_key(
    model: EvalModel, base: EvalModel, config: EvalConfig, kl_config: GenerationConfig, prompts: list[Text]
) -> dict[str, Any]:
    return {
        "kind": "kl",
        "policy": model.identity,
        "base": base.identity,
        "k": config.kl_samples,
        "sampling": decoding_settings(kl_config),
        "prompts": _digest([prompt_key(x) for x in prompts]),
    }


def _pair_logps(config: EvalConfig, model: EvalModel, pairs: list[PreferenceRecord], results: ResultCache) -> PairLogps:
    from ..data.tokenize import TokenizeConfig

    tokenize = TokenizeConfig(prompt_format=config.generation.prompt_format)
    bf16 = scores_in_bf16(config)
    key = {
        "kind": "pair_logps",
        "model": model.identity,
        "precision": "bf16-autocast" if bf16 else "model",
        "tokenize": dataclasses.asdict(tokenize),
        "pairs": _digest([record.to_json() for record in pairs]),
    }
    stored = results.get(key)
    if stored is not None:
        return PairLogps(**stored)
    computed = pair_logps(model, pairs, tokenize, config.generation.batch_size, bf16)
    results.put(key, dataclasses.asdict(computed))
    return computed


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def precision(dtype: str) -> str:
    """The `--dtype` setting as it runs on this machine: `auto` resolved, `model` said in words."""
    from ..models.loading import default_device
    from ..models.precision import fast_bf16

    if dtype == "auto":
        dtype = "bfloat16" if fast_bf16(default_device()) else "model"
    return "each model's own" if dtype == "model" else dtype


def scores_in_bf16(config: EvalConfig) -> bool:
    """Whether the scoring passes (reward-model judge, held-out pair log-probs) run under bf16 autocast: where the
    answers are generated in bf16."""
    return precision(config.generation.dtype) == "bfloat16"
