"""Prefix sharing: [prompt | chosen | rejected] scores each response exactly as alone, in both layouts: one
padding-free row under pair attention, and packed rows under a block mask."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prefalign.data.collate import collate_pairs
from prefalign.data.shared_prefix import SPANS_KWARG, collate_pair_row, collate_shared_prefix, pack_rows
from prefalign.data.tokenize import TokenizedPair
from prefalign.models import pair_attention
from prefalign.scoring.run import PairLayout, enable_pair_attention, score_completions
from test_train_forward import load_tiny, random_pairs
from test_train_support import single_thread  # noqa: F401  (an autouse fixture: importing it applies it here)

LAYOUTS = {"row": collate_pair_row, "packed": collate_shared_prefix}


def test_layout_positions_mask_and_predicting_positions_by_hand() -> None:
    # prompt 10 11, chosen 20 21 22, rejected 30 31; a second pair packs beside it (capacity = the longest pair, 7).
    batch = collate_shared_prefix(
        [TokenizedPair([10, 11], [20, 21, 22], [30, 31]), TokenizedPair([12], [23], [32])], pad_id=0
    )
    assert batch.input_ids.tolist() == [[10, 11, 20, 21, 22, 30, 31], [12, 23, 32, 0, 0, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 2, 3], [0, 1, 1, 0, 0, 0, 0]]
    assert batch.num_tokens == 10 and batch.num_pairs == 2
    mask = batch.attention_mask[0, 0].int().tolist()
    assert mask[4] == [1, 1, 1, 1, 1, 0, 0]  # last chosen token: prompt + chosen
    assert mask[5] == [1, 1, 0, 0, 0, 1, 0]  # first rejected token: prompt + itself, not chosen
    assert mask[6] == [1, 1, 0, 0, 0, 1, 1]
    assert mask[1] == [1, 1, 0, 0, 0, 0, 0]  # prompt: causal
    second = batch.attention_mask[1, 0].int().tolist()
    assert second[2] == [1, 0, 1, 0, 0, 0, 0] and second[4] == [0, 0, 0, 0, 1, 0, 0]  # padding sees itself only
    index = batch.index
    # chosen 20 21 22 from positions 1 2 3; rejected 30 from the last prompt position 1, 31 from 5; row 2 at 7 + ...
    assert index.positions.tolist() == [1, 2, 3, 1, 5, 7, 7]
    assert index.targets.tolist() == [20, 21, 22, 30, 31, 23, 32]
    assert index.sequences.tolist() == [0, 0, 0, 2, 2, 1, 3]


def test_row_layout_by_hand() -> None:
    batch = collate_pair_row([TokenizedPair([10, 11], [20, 21, 22], [30, 31]), TokenizedPair([12], [23], [32])])
    assert batch.input_ids.tolist() == [[10, 11, 20, 21, 22, 30, 31, 12, 23, 32]]  # no padding anywhere
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 2, 3, 0, 1, 1]]
    assert batch.attention_mask is None and batch.spans == ((0, 2, 3, 2), (7, 1, 1, 1))
    assert batch.num_tokens == 10 and batch.num_pairs == 2
    assert batch.index.positions.tolist() == [1, 2, 3, 1, 5, 7, 7]
    assert batch.index.targets.tolist() == [20, 21, 22, 30, 31, 23, 32]
    assert batch.index.sequences.tolist() == [0, 0, 0, 2, 2, 1, 3]


def test_pair_attention_equals_the_block_mask_on_random_tensors() -> None:
    # Two pairs (prompt, chosen, rejected) = (3, 2, 4) and (1, 3, 2) in one row; GQA: 4 query heads, 2 key heads.
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, heads, 15, 8, generator=generator) for heads in (4, 2, 2))
    batch = collate_shared_prefix([TokenizedPair([1] * 3, [1] * 2, [1] * 4), TokenizedPair([1], [1] * 3, [1] * 2)], 0)
    mask = torch.zeros(15, 15, dtype=torch.bool)  # the two pairs' block masks on the diagonal of one 15-token row
    mask[:9, :9], mask[9:, 9:] = batch.attention_mask[0, 0, :9, :9], batch.attention_mask[1, 0, :6, :6]
    module = torch.nn.Module().eval()
    inputs = [tensor.requires_grad_() for tensor in (query, key, value)]
    out, _ = pair_attention.pair_attention(module, *inputs, None, **{SPANS_KWARG: ((0, 3, 2, 4), (9, 1, 3, 2))})
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(2, 1), value.repeat_interleave(2, 1), attn_mask=mask
    ).transpose(1, 2)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    weights = torch.randn(out.shape, generator=generator)
    grads = torch.autograd.grad((out * weights).sum(), inputs)
    expected_grads = torch.autograd.grad((expected * weights).sum(), inputs)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="must tile the row"):  # a gap between two pairs
        pair_attention.pair_attention(module, query, key, value, None, **{SPANS_KWARG: ((0, 3, 2, 3), (9, 1, 3, 2))})
    with pytest.raises(ValueError, match="cover 14 positions of a 15-token row"):
        pair_attention.pair_attention(module, query, key, value, None, **{SPANS_KWARG: ((0, 3, 2, 4), (9, 1, 3, 1))})


def test_pack_rows_is_first_fit_decreasing() -> None:
    assert pack_rows([5, 2, 3, 4, 1]) == [[0], [3, 4], [2, 1]]


def _shared_and_plain(
    model: torch.nn.Module, pairs: list[TokenizedPair], layout: str = "packed"
) -> tuple[torch.Tensor, torch.Tensor]:
    _, shared = score_completions(model, LAYOUTS[layout](pairs, pad_id=0))
    _, plain = score_completions(model, collate_pairs(pairs, pad_id=0))
    assert torch.equal(shared.num_tokens, plain.num_tokens)
    return shared.sum_logps, plain.sum_logps


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("lora", [False, True])
def test_shared_prefix_logps_and_gradients_equal_two_sequences_on_the_tiny_model(
    tiny_model_dir: Path, lora: bool, layout: str
) -> None:
    model = load_tiny(tiny_model_dir, lora=lora)
    pairs = random_pairs(model.get_output_embeddings().weight.shape[0], 6, seed=2)
    trainable = [p for p in model.parameters() if p.requires_grad]
    shared, plain = _shared_and_plain(model, pairs, layout)
    torch.testing.assert_close(shared, plain, atol=1e-4, rtol=0)
    weights = torch.linspace(-1, 1, len(shared))  # any loss of the log-probs: its gradients must agree too
    for ours, theirs in zip(
        torch.autograd.grad((shared * weights).sum(), trainable),
        torch.autograd.grad((plain * weights).sum(), trainable),
    ):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-3)


def test_eager_attention_takes_the_block_mask_too(tiny_model_dir: Path) -> None:
    from prefalign.models.loading import load_model

    model = load_model(str(tiny_model_dir), device="cpu").eval()
    model.config._attn_implementation = "eager"
    pairs = random_pairs(model.get_output_embeddings().weight.shape[0], 3, seed=3)
    with torch.no_grad():
        shared, plain = _shared_and_plain(model, pairs)
    torch.testing.assert_close(shared, plain, atol=1e-4, rtol=0)


@pytest.mark.model
@pytest.mark.shared
def test_shared_prefix_equals_two_sequences_on_real_hh_pairs_and_smollm2(smollm2_dir: Path, hh_test_path: Path) -> None:
    from prefalign.data.loading import load_preferences
    from prefalign.data.tokenize import TokenizeConfig, tokenize_preferences
    from prefalign.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(smollm2_dir))
    records = load_preferences(str(hh_test_path), "hh").records[:4]
    pairs, _ = tokenize_preferences(records, tokenizer, TokenizeConfig(max_length=96, max_prompt_length=64))
    assert len(pairs) == 4 and all(p.chosen_ids != p.rejected_ids for p in pairs)
    model = load_model(str(smollm2_dir), device="cpu").eval()
    with torch.no_grad():
        for layout in LAYOUTS:
            shared, plain = _shared_and_plain(model, pairs, layout)
            torch.testing.assert_close(shared, plain, atol=1e-4, rtol=0, msg=layout)


def test_a_model_whose_attention_ignores_the_spans_keeps_the_mask_layout(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from prefalign.models.loading import load_model

    def plain_sdpa(*args: object, **kwargs: object) -> object:  # attention that knows nothing of pairs
        kwargs.pop(SPANS_KWARG, None)
        return sdpa_attention_forward(*args, **kwargs)

    monkeypatch.setattr(
        pair_attention, "register", lambda: AttentionInterface.register(pair_attention.ATTENTION_NAME, plain_sdpa)
    )
    model = load_model(str(tiny_model_dir), device="cpu")
    assert not enable_pair_attention(model)
    assert model.config._attn_implementation == "sdpa"  # switched back
    with pytest.raises(ValueError, match="cannot run pair attention"):
        score_completions(model, collate_pair_row(random_pairs(model.get_output_embeddings().weight.shape[0], 2, 1)))
    eager = load_model(str(tiny_model_dir), device="cpu")
    eager.config._attn_implementation = "eager"
    assert not enable_pair_attention(eager)
    monkeypatch.undo()
    AttentionInterface.register(pair_attention.ATTENTION_NAME, pair_attention.pair_attention)


def test_dpo_objective_gives_the_same_loss_metrics_and_kl_with_and_without_prefix_sharing(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from prefalign.models.loading import load_model, load_tokenizer
    from prefalign.models.tiny import save_tiny_model
    from prefalign.train.config import DPOConfig
    from prefalign.train.distributed import DistInfo
    from prefalign.train.objectives import DPOObjective
    from test_train_support import write_pairs

    single = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)
    reference = save_tiny_model(tmp_path / "ref", seed=1)  # a different reference, so rewards and KL are not 0
    data = write_pairs(tmp_path / "p.jsonl", 5)
    metrics = {}
    for layout in ("row", "packed", "plain"):
        config = DPOConfig(
            model=str(tiny_model_dir),
            data=str(data),
            output_dir="x",
            ref_model=str(reference),
            prefix_sharing=layout != "plain",
        )
        objective = DPOObjective(config)
        items, _ = objective.load(config.data, load_tokenizer(config.model))
        policy = load_model(config.model, device="cpu").eval()
        objective.setup(policy, {config.data: items}, single)
        # The tiny model runs SDPA: pair attention by default, one row.
        assert objective.layout.kind == ("row" if layout != "plain" else "padded")
        if layout == "packed":  # the 4D-mask layout, as for a model without pair attention
            objective.layout = PairLayout("shared_prefix", objective.layout.pad_id)
        with torch.no_grad():
            _, sums = objective.loss(policy, objective.collate(items))
            batch = objective.collate(items)
        assert (type(batch.pairs).__name__ == "SharedPrefixBatch") == (layout != "plain")
        assert (batch.pairs.input_ids.shape[0] == 1) == (layout == "row")
        metrics[layout] = objective.metrics({key: float(value) for key, value in sums.items()})
    plain = metrics["plain"]
    assert {"kl", "loss", "rewards/margins"} <= plain.keys()
    for layout in ("row", "packed"):
        assert metrics[layout].keys() == plain.keys()
        for key in plain:
            assert metrics[layout][key] == pytest.approx(plain[key], abs=1e-4), (layout, key)
