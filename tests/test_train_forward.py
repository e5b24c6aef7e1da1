"""Completion-only scoring (`prefalign.train.forward`) equals the full-logits computation, with and without LoRA."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from prefalign.data.collate import collate_pairs
from prefalign.data.tokenize import TokenizedPair
from prefalign.losses import IGNORE_INDEX, sequence_logps, token_kl
from prefalign.train.forward import (
    completion_kl,
    completion_states,
    plain_completion_index,
)
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


@pytest.mark.parametrize("lora", [False, True])
def test_completion_only_logps_equal_full_logits_in_value_and_gradient(tiny_model_dir: Path, lora: bool) -> None:
    model = load_tiny(tiny_model_dir, lora=lora)
    vocab = model.get_output_embeddings().weight.shape[0]
    batch = collate_pairs(random_pairs(vocab, 5), pad_id=0)
    trainable = [p for p in model.parameters() if p.requires_grad]

    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    full = sequence_logps(logits, batch.labels[:, 1:])
    full_grads = torch.autograd.grad(full.sum_logps.sum(), trainable)

    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    states = completion_states(model, inputs, plain_completion_index(batch.labels))
    ours = states.sequence_logps(chunk_size=3)  # chunks that end mid-sequence
    our_grads = torch.autograd.grad(ours.sum_logps.sum(), trainable)

    assert states.hidden.shape[0] == batch.num_completion_tokens  # the head saw completion positions only
    assert torch.equal(ours.num_tokens, full.num_tokens)
    torch.testing.assert_close(ours.sum_logps, full.sum_logps, atol=1e-5, rtol=0)
    for ours_grad, full_grad in zip(our_grads, full_grads):
        torch.testing.assert_close(ours_grad, full_grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("lora", [False, True])
def test_completion_kl_equals_token_kl(tiny_model_dir: Path, lora: bool) -> None:
    policy = load_tiny(tiny_model_dir, lora=lora)
    vocab = policy.get_output_embeddings().weight.shape[0]
    if lora:  # the LoRA reference: the same modules with the adapter off
        from prefalign.models.lora import adapter_disabled

        def reference_run(fn):  # type: ignore[no-untyped-def]
            with adapter_disabled(policy):
                return fn(policy)
    else:
        from prefalign.models.loading import load_model
        from prefalign.models.tiny import save_tiny_model

        other = load_model(str(save_tiny_model(tiny_model_dir.parent / "other", seed=1)), device="cpu").eval()

        def reference_run(fn):  # type: ignore[no-untyped-def]
            return fn(other)

    batch = collate_pairs(random_pairs(vocab, 4, seed=1), pad_id=0)
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    index = plain_completion_index(batch.labels)
    with torch.no_grad():
        policy_logits = policy(**inputs).logits[:, :-1]
        ref_logits = reference_run(lambda m: m(**inputs).logits[:, :-1])
        expected = token_kl(
            policy_logits, ref_logits, batch.labels[:, 1:] != IGNORE_INDEX, reduction="sum_per_sequence"
        )
        ours = completion_kl(
            completion_states(policy, inputs, index),
            reference_run(lambda m: completion_states(m, inputs, index)),
            chunk_size=5,
        )
    assert float(expected.min()) > 0  # the two models do differ
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
