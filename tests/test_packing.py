"""SFT packing: the examples of a batch end to end in one padding-free row, each attending only to itself, score
exactly as right-padded rows do: per-example log-probs, the loss and its gradients (fp32, within 1e-4)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from prefalign.data.collate import collate_sft
from prefalign.data.packing import causal_span, collate_sft_row
from prefalign.data.shared_prefix import SPANS_KWARG
from prefalign.data.tokenize import SFTExample
from prefalign.models import pair_attention
from prefalign.scoring.run import score_completions
from test_train_forward import load_tiny
from test_train_support import single_thread  # noqa: F401  (an autouse fixture: importing it applies it here)


def random_examples(vocab: int, count: int, seed: int = 0) -> list[SFTExample]:
    """Examples of different prompt and response lengths, so padded rows carry padding and head chunks cut across."""
    rng = random.Random(seed)

    def ids(low: int, high: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(rng.randint(low, high))]

    return [SFTExample(ids(1, 9), ids(1, 8)) for _ in range(count)]


def test_row_layout_by_hand() -> None:
    # prompt 10 11, response 20 21 22; then prompt 12, response 23; then an empty prompt before response 24 25.
    batch = collate_sft_row([SFTExample([10, 11], [20, 21, 22]), SFTExample([12], [23]), SFTExample([], [24, 25])])
    assert batch.input_ids.tolist() == [[10, 11, 20, 21, 22, 12, 23, 24, 25]]  # no padding anywhere
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 0, 1]]
    assert batch.spans == ((0, 4, 0, 1), (5, 1, 0, 1), (7, 1, 0, 1))
    assert batch.num_tokens == 9 and batch.num_sequences == 3 and batch.num_completion_tokens == 5
    # Token t of an example is predicted at its position t - 1; the first token of the row (24) has none, as in a
    # padded row, and is not scored.
    assert batch.index.positions.tolist() == [1, 2, 3, 5, 7]
    assert batch.index.targets.tolist() == [20, 21, 22, 23, 25]
    assert batch.index.sequences.tolist() == [0, 0, 0, 1, 2]
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        collate_sft_row([SFTExample([], [5])])


def test_a_causal_span_is_causal_attention_on_random_tensors() -> None:
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, heads, 9, 8, generator=generator) for heads in (4, 2, 2))
    spans = (causal_span(0, 5), causal_span(5, 2), causal_span(7, 2))
    out, _ = pair_attention.pair_attention(torch.nn.Module().eval(), query, key, value, None, **{SPANS_KWARG: spans})
    mask = torch.zeros(9, 9, dtype=torch.bool)
    for start, length in ((0, 5), (5, 2), (7, 2)):
        mask[start : start + length, start : start + length] = torch.ones(length, length, dtype=torch.bool).tril()
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(2, 1), value.repeat_interleave(2, 1), attn_mask=mask
    )
    torch.testing.assert_close(out, expected.transpose(1, 2), atol=1e-6, rtol=0)


def assert_packed_equals_padded(model: torch.nn.Module, examples: list[SFTExample]) -> None:
    """Per-example log-probs, the SFT loss (the summed NLL) and its gradients: packed row against padded rows."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    packed_states, packed = score_completions(model, collate_sft_row(examples))
    _, padded = score_completions(model, collate_sft(examples, pad_id=0))
    assert torch.equal(packed.num_tokens, padded.num_tokens)
    assert packed.num_tokens.tolist() == [len(e.completion_ids) for e in examples]
    assert packed_states.hidden.shape[0] == sum(len(e.completion_ids) for e in examples)  # head at responses only
    torch.testing.assert_close(packed.sum_logps, padded.sum_logps, atol=1e-4, rtol=0)
    packed_loss, padded_loss = -packed.sum_logps.sum(), -padded.sum_logps.sum()
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-4, rtol=0)
    for ours, theirs in zip(torch.autograd.grad(packed_loss, trainable), torch.autograd.grad(padded_loss, trainable)):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_packed_row_equals_padded_rows_on_the_tiny_model(tiny_model_dir: Path, lora: bool) -> None:
    model = load_tiny(tiny_model_dir, lora=lora)
    examples = random_examples(model.get_output_embeddings().weight.shape[0], 7, seed=1)
    assert_packed_equals_padded(model, examples)
    assert model.config._attn_implementation == pair_attention.ATTENTION_NAME  # the row ran under pair attention


def test_sft_pads_where_the_model_cannot_run_pair_attention(tiny_model_dir: Path, tmp_path: Path) -> None:
    from prefalign.models.loading import load_model, load_tokenizer
    from prefalign.train.config import SFTConfig
    from prefalign.train.distributed import DistInfo
    from prefalign.train.objectives import SFTObjective
    from test_train_support import write_sft

    config = SFTConfig(model=str(tiny_model_dir), data=str(write_sft(tmp_path / "sft.jsonl", 3)), output_dir="x")
    objective = SFTObjective(config)
    items, _ = objective.load(config.data, load_tokenizer(config.model))
    model = load_model(config.model, device="cpu")
    model.config._attn_implementation = "eager"
    single = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)
    objective.setup(model, {config.data: items}, single)
    assert not objective.packed
    assert objective.collate(items).input_ids.shape[0] == 3  # one padded row per example


@pytest.mark.model
@pytest.mark.shared
def test_packed_row_equals_padded_rows_on_real_hh_data_and_smollm2(smollm2_dir: Path, hh_test_path: Path) -> None:
    from prefalign.data.loading import load_preferences
    from prefalign.data.tokenize import TokenizeConfig, tokenize_sft_examples
    from prefalign.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(smollm2_dir))
    records = load_preferences(str(hh_test_path), "hh").records[:4]
    rows = [(r.prompt, r.chosen, r.location) for r in records]
    examples, _ = tokenize_sft_examples(rows, tokenizer, TokenizeConfig(max_length=96, max_prompt_length=64))
    assert len(examples) == 4
    model = load_model(str(smollm2_dir), device="cpu").eval()
    assert_packed_equals_padded(model, examples)
