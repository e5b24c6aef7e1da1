"""Completion-only scoring (`prefalign.scoring`) equals a computation by hand from the model's full logits, with and
without LoRA."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from prefalign.data.collate import IGNORE_INDEX, collate_pairs, plain_completion_index
from prefalign.data.tokenize import TokenizedPair
from prefalign.scoring.completions import completion_kl
from prefalign.scoring.run import completion_states
from test_train_support import single_thread  # noqa: F401  (an autouse fixture: importing it applies it here)


def random_pairs(vocab: int, count: int, seed: int = 0) -> list[TokenizedPair]:
    """Pairs of different prompt and completion lengths, so rows carry padding and chunks cut across sequences."""
    rng = random.Random(seed)

    def ids(low: int, high: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(rng.randint(low, high))]

    return [TokenizedPair(ids(1, 9), ids(1, 7), ids(1, 7)) for _ in range(count)]


def load_tiny(tiny_model_dir: Path, *, lora: bool) -> torch.nn.Module:
    from prefalign.models.loading import load_model
    from prefalign.models.lora import apply_lora

    model = load_model(str(tiny_model_dir), device="cpu")
    if lora:
        torch.manual_seed(0)
        model = apply_lora(model, rank=4, alpha=8.0, dropout=0.0, target_modules=["q_proj", "v_proj"])
        for name, param in model.named_parameters():  # B = 0 at init would hide a LoRA layer that does not run
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.5)
    model.eval()
    return model


def full_logits_sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """By hand from full logits [N, T, V] and unshifted labels [N, T]: per row, the sum of log softmax(logits[t])
    [labels[t + 1]] over labelled t + 1, and how many tokens that is."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    next_labels = labels[:, 1:]
    mask = next_labels != IGNORE_INDEX
    picked = logp.gather(-1, next_labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, picked, 0.0).sum(-1), mask.sum(-1)


def full_logits_kl(policy_logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """By hand: per row, sum over labelled positions of sum_v pi(v) (log pi(v) - log ref(v))."""
    policy_logp = torch.log_softmax(policy_logits[:, :-1].float(), dim=-1)
    ref_logp = torch.log_softmax(ref_logits[:, :-1].float(), dim=-1)
    kl = (policy_logp.exp() * (policy_logp - ref_logp)).sum(-1)
    return torch.where(labels[:, 1:] != IGNORE_INDEX, kl, 0.0).sum(-1)


@pytest.mark.parametrize("lora", [False, True])
def test_completion_only_logps_equal_full_logits_in_value_and_gradient(tiny_model_dir: Path, lora: bool) -> None:
    model = load_tiny(tiny_model_dir, lora=lora)
    vocab = model.get_output_embeddings().weight.shape[0]
    batch = collate_pairs(random_pairs(vocab, 5), pad_id=0)
    trainable = [p for p in model.parameters() if p.requires_grad]

    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    full_sums, full_tokens = full_logits_sequence_logps(logits, batch.labels)
    full_grads = torch.autograd.grad(full_sums.sum(), trainable)

    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    states = completion_states(model, inputs, plain_completion_index(batch.labels))
    ours = states.sequence_logps(chunk_size=3)  # chunks that end mid-sequence
    our_grads = torch.autograd.grad(ours.sum_logps.sum(), trainable)

    assert states.hidden.shape[0] == batch.num_completion_tokens  # the head saw completion positions only
    assert torch.equal(ours.num_tokens, full_tokens)
    torch.testing.assert_close(ours.sum_logps, full_sums, atol=1e-5, rtol=0)
    for ours_grad, full_grad in zip(our_grads, full_grads):
        torch.testing.assert_close(ours_grad, full_grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("lora", [False, True])
def test_completion_kl_equals_the_full_logits_kl_by_hand(tiny_model_dir: Path, lora: bool) -> None:
    policy = load_tiny(tiny_model_dir, lora=lora)
    vocab = policy.get_output_embeddings().weight.shape[0]
    if lora:  # the LoRA reference: the same modules with the adapter off
        from prefalign.models.lora import adapter_disabled

        def reference_run(fn: Callable[[torch.nn.Module], Any]) -> Any:
            with adapter_disabled(policy):
                return fn(policy)
    else:
        from prefalign.models.loading import load_model
        from prefalign.models.tiny import save_tiny_model

        other = load_model(str(save_tiny_model(tiny_model_dir.parent / "other", seed=1)), device="cpu").eval()

        def reference_run(fn: Callable[[torch.nn.Module], Any]) -> Any:
            return fn(other)

    batch = collate_pairs(random_pairs(vocab, 4, seed=1), pad_id=0)
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    index = plain_completion_index(batch.labels)
    with torch.no_grad():
        policy_logits = policy(**inputs).logits
        ref_logits = reference_run(lambda m: m(**inputs).logits)
        expected = full_logits_kl(policy_logits, ref_logits, batch.labels)
        ours = completion_kl(
            completion_states(policy, inputs, index),
            reference_run(lambda m: completion_states(m, inputs, index)),
            chunk_size=5,
        )
    assert float(expected.min()) > 0  # the two models do differ
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
