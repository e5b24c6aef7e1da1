"""The frozen-prefix cache (`prefalign.scoring.prefix_cache`): with LoRA on the last blocks only, the blocks below run
once per sequence. A batch resumed above them from cached states must score, and differentiate, as the full model
does, whatever batch the states were computed in; and training with the cache must take the steps training without
it takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from prefalign.data.packing import collate_sft_row
from prefalign.data.shared_prefix import collate_pair_row
from prefalign.data.tokenize import SFTExample
from prefalign.models.loading import load_model
from prefalign.models.lora import adapter_disabled, apply_lora
from prefalign.scoring import prefix_cache
from prefalign.scoring.run import enable_pair_attention, score_completions, unwrap
from prefalign.train.config import DPOConfig, RewardConfig, SFTConfig
from prefalign.train.loop import train
from prefalign.train.objectives import DPOObjective, SFTObjective
from prefalign.train.objectives.reward import RewardObjective
from test_train_forward import random_pairs
from test_train_support import (
    quiet,
    records_of,
    single_thread,  # noqa: F401  (an autouse fixture: importing it applies it here)
    write_pairs,
    write_sft,
)


def lora_on_last_block(tiny_model_dir: Path) -> torch.nn.Module:
    model = load_model(str(tiny_model_dir), device="cpu")
    torch.manual_seed(0)
    model = apply_lora(model, rank=4, alpha=8.0, dropout=0.0, target_modules=["all-linear"], last_layers=1)
    for name, param in model.named_parameters():  # B = 0 at init would hide an adapter that does not run
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    assert enable_pair_attention(model)
    return model


def scored(model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-sequence log-probs of `batch` and their sum's gradient with respect to every trainable parameter."""
    _, logps = score_completions(model, batch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return logps.sum_logps.detach(), list(torch.autograd.grad(logps.sum_logps.sum(), trainable))


def assert_same(a: tuple[torch.Tensor, list[torch.Tensor]], b: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=0)
    for ours, theirs in zip(a[1], b[1], strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_only_frozen_leading_blocks_count(tiny_model_dir: Path) -> None:
    full = load_model(str(tiny_model_dir), device="cpu")
    assert prefix_cache.frozen_depth(full) == 0  # full fine-tuning: the embedding itself trains
    every_block = apply_lora(full, rank=2, alpha=4.0, dropout=0.0, target_modules=["all-linear"])
    assert prefix_cache.frozen_depth(unwrap(every_block)) == 0
    last = apply_lora(
        load_model(str(tiny_model_dir)), rank=2, alpha=4.0, dropout=0.0, target_modules=["all-linear"], last_layers=1
    )
    assert prefix_cache.frozen_depth(unwrap(last)) == unwrap(last).config.num_hidden_layers - 1 == 1


def test_pairs_resumed_from_states_of_other_batches_score_and_differentiate_as_in_full(tiny_model_dir: Path) -> None:
    model = lora_on_last_block(tiny_model_dir)
    pairs = random_pairs(unwrap(model).config.vocab_size, 6, seed=3)
    first, second, mixed = collate_pair_row(pairs[:3]), collate_pair_row(pairs[3:]), collate_pair_row(pairs[::-1])
    expected = scored(model, mixed)  # no cache
    cache = prefix_cache.attach(model, unwrap(model), 2**30)
    assert cache is not None and cache.depth == 1
    try:
        scored(model, first), scored(model, second)  # computed in full: every pair's prefix states kept
        assert (cache.hits, cache.misses) == (0, 2)
        assert_same(scored(model, mixed), expected)  # all six, in another order and batch
        assert cache.hits == 1
        # The reference (the adapter off) shares the prefix: it reads the same states.
        with adapter_disabled(model), torch.no_grad():
            resumed = score_completions(model, mixed)[1].sum_logps
        prefix_cache.release(model)
        with adapter_disabled(model), torch.no_grad():
            full = score_completions(model, mixed)[1].sum_logps
        torch.testing.assert_close(resumed, full, atol=1e-5, rtol=0)
    finally:
        prefix_cache.release(model)


def test_sft_rows_resume_as_in_full(tiny_model_dir: Path) -> None:
    model = lora_on_last_block(tiny_model_dir)
    pairs = random_pairs(unwrap(model).config.vocab_size, 5, seed=4)
    examples = [SFTExample(pair.prompt_ids, pair.chosen_ids) for pair in pairs]
    expected = scored(model, collate_sft_row(examples))
    cache = prefix_cache.attach(model, unwrap(model), 2**30)
    assert cache is not None
    try:
        scored(model, collate_sft_row(examples[:2])), scored(model, collate_sft_row(examples[2:]))
        assert_same(scored(model, collate_sft_row(examples)), expected)
        assert cache.hits == 1
    finally:
        prefix_cache.release(model)


def test_the_budget_caps_what_is_kept(tiny_model_dir: Path) -> None:
    model = lora_on_last_block(tiny_model_dir)
    pairs = random_pairs(unwrap(model).config.vocab_size, 4, seed=5)
    cache = prefix_cache.attach(model, unwrap(model), 1)  # one byte: the first batch's states, then nothing more
    assert cache is not None
    try:
        scored(model, collate_pair_row(pairs[:2]))
        kept = cache.bytes
        scored(model, collate_pair_row(pairs[2:]))
        assert kept > 0 and cache.bytes == kept
        expected = scored(model, collate_pair_row(pairs))  # half cached: run in full, and right
        assert cache.hits == 0
        prefix_cache.release(model)
        assert_same(scored(model, collate_pair_row(pairs)), expected)
    finally:
        prefix_cache.release(model)


def test_a_model_that_does_not_resume_from_a_blocks_output_gets_no_cache(tiny_model_dir: Path) -> None:
    model = lora_on_last_block(tiny_model_dir)
    decoder = unwrap(model).get_decoder()

    def scale_given_embeddings(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> Any:
        # As a model that scales its embeddings inside forward (Gemma): resumed states would be scaled again.
        if kwargs.get("inputs_embeds") is not None:
            kwargs["inputs_embeds"] = kwargs["inputs_embeds"] * 2.0
        return args, kwargs

    handle = decoder.register_forward_pre_hook(scale_given_embeddings, with_kwargs=True)
    try:
        assert prefix_cache.attach(model, unwrap(model), 2**30) is None
        assert prefix_cache.cache_of(unwrap(model)) is None
    finally:
        handle.remove()


def test_a_negative_budget_is_a_one_line_error() -> None:
    from prefalign.errors import PrefalignError

    with pytest.raises(PrefalignError, match="--prefix-cache-mb must be 0 .off. or more, got -1"):
        DPOConfig(model="m", data="d", output_dir="o", lora=True, lora_layers=2, prefix_cache_mb=-1)


STEADY_KEYS = {"tokens_per_second", "pairs_per_second", "examples_per_second", "split"}


@pytest.mark.parametrize("objective", ["dpo", "reward", "sft"])
def test_training_with_the_cache_takes_the_steps_training_without_it_takes(
    tiny_model_dir: Path, tmp_path: Path, objective: str
) -> None:
    data = write_sft(tmp_path / "sft.jsonl", 12) if objective == "sft" else write_pairs(tmp_path / "pairs.jsonl", 12)
    config_class, objective_class = {
        "dpo": (DPOConfig, DPOObjective),
        "reward": (RewardConfig, RewardObjective),
        "sft": (SFTConfig, SFTObjective),
    }[objective]
    options = quiet(
        model=str(tiny_model_dir),
        data=str(data),
        epochs=2,
        batch_size=4,
        eval_split=0.25,
        eval_steps=0.5,
        logging_steps=1,
        learning_rate=1e-2,
        lora=True,
        lora_rank=4,
        lora_layers=1,
        lora_dropout=0.0 if objective == "sft" else 0.05,  # dropout in the adapted block draws alike either way
    )
    if objective == "dpo":
        options["precompute_ref"] = True  # a reference pass fills the cache before the first step (unless read)

    def run(name: str, megabytes: int) -> tuple[list[dict], list[dict], dict]:
        config = config_class(**options, output_dir=str(tmp_path / name), prefix_cache_mb=megabytes)
        result = train(config, objective_class(config))
        assert prefix_cache.cache_of(unwrap(result.model)) is None  # released at the end of the run
        return records_of(tmp_path / name, "train"), records_of(tmp_path / name, "eval"), result.summary

    plain_train, plain_eval, plain_summary = run("plain", 0)
    cached_train, cached_eval, cached_summary = run("cached", 64)
    assert plain_summary["prefix_cache"] is None
    counts = cached_summary["prefix_cache"]
    assert counts["depth"] == 1 and counts["resumed"] > 0 and counts["mib"] > 0
    # In full: at most the layout check's toy row, the first validation and the first epoch's 3 batches. Resumed: the
    # second epoch's 3 batches (other batches of the same sequences) and the later 2 validations. DPO's first
    # validation runs no model: before the first update the policy's log-probs are the precomputed reference ones.
    assert counts["full"] <= 5 and counts["resumed"] >= (4 if objective == "dpo" else 5)
    assert len(plain_train) == len(cached_train) == 6 and plain_train[-1]["loss"] != plain_train[0]["loss"]
    for a, b in zip(plain_train + plain_eval, cached_train + cached_eval, strict=True):
        for key in a.keys() - STEADY_KEYS:
            assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])), key
