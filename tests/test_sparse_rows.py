"""Row-sparse embedding gradients (`prefalign.train.sparse_rows`): AdamW with state for the touched rows only takes the
steps dense AdamW takes, clipping included, across a checkpoint, and in a reward model's full fine-tune."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefalign.train import sparse_rows
from prefalign.train.config import RewardConfig
from prefalign.train.loop import train
from prefalign.train.memory import training_state_bytes
from prefalign.train.objectives import reward as reward_objective
from prefalign.train.objectives.reward import RewardObjective
from prefalign.train.sparse_rows import AdamWithSparseRows, clip_grad_norm
from test_train_support import (
    assert_same_metrics,
    quiet,
    records_of,
    single_thread,  # noqa: F401  (an autouse fixture: importing it applies it here)
    write_pairs,
)

# The tokens of each step: row 7 trained at the first step only, row 0 never; repeats within a step add up.
STEPS = [[1, 7, 7, 3], [2, 3, 3], [9, 1], [4], [3, 5, 5, 5], [2]]


def _models(sparse: bool) -> tuple[torch.nn.Embedding, torch.nn.Linear]:
    torch.manual_seed(0)
    return torch.nn.Embedding(10, 6, sparse=sparse), torch.nn.Linear(6, 1)


def _backward(embedding: torch.nn.Embedding, head: torch.nn.Linear, tokens: list[int]) -> torch.Tensor:
    loss = (head(torch.tanh(embedding(torch.tensor(tokens)))) ** 2).sum()
    loss.backward()
    return loss


def _train(sparse: bool, weight_decay: float, max_norm: float, steps: list[list[int]]) -> list[torch.Tensor]:
    embedding, head = _models(sparse)
    params = [embedding.weight, *head.parameters()]
    optimizer = (AdamWithSparseRows if sparse else torch.optim.AdamW)(
        params, lr=0.05, weight_decay=weight_decay, fused=True
    )
    norms = []
    for tokens in steps:
        _backward(embedding, head, tokens)
        clip = clip_grad_norm if sparse else torch.nn.utils.clip_grad_norm_
        norms.append(clip(params, max_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return [embedding.weight.detach(), *(p.detach() for p in head.parameters()), torch.stack(norms)]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("max_norm", [1e9, 0.5])  # no clipping, and clipping at every step
def test_sparse_rows_take_dense_adamw_steps(weight_decay: float, max_norm: float) -> None:
    dense = _train(False, weight_decay, max_norm, STEPS)
    rows = _train(True, weight_decay, max_norm, STEPS)
    assert (dense[-1] > 0.5).all()  # every step's gradient norm: at max_norm 0.5 each step is clipped
    for a, b in zip(dense, rows):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
    assert not torch.equal(rows[0][7], _models(False)[0].weight[7])  # touched once, moved at every step since
    untouched = _models(False)[0].weight[0] * (1 - 0.05 * weight_decay) ** len(STEPS)
    torch.testing.assert_close(rows[0][0], untouched)  # never touched: weight decay alone


def test_sparse_state_is_the_touched_rows_and_survives_a_checkpoint() -> None:
    embedding, head = _models(True)
    params = [embedding.weight, *head.parameters()]
    optimizer = AdamWithSparseRows(params, lr=0.05, weight_decay=0.1, fused=True)
    for tokens in STEPS[:3]:
        _backward(embedding, head, tokens)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    state = optimizer.state[embedding.weight]
    assert state["rows"].tolist() == [1, 2, 3, 7, 9] and state["exp_avg"].shape == (5, 6)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    resumed_embedding, resumed_head = copy.deepcopy(embedding), copy.deepcopy(head)
    resumed = AdamWithSparseRows(
        [resumed_embedding.weight, *resumed_head.parameters()], lr=0.05, weight_decay=0.1, fused=True
    )
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.state[resumed_embedding.weight]["rows"].dtype == torch.long
    for (emb, hd), opt in (((embedding, head), optimizer), ((resumed_embedding, resumed_head), resumed)):
        for tokens in STEPS[3:]:
            _backward(emb, hd, tokens)
            opt.step()
            opt.zero_grad(set_to_none=True)
    assert torch.equal(embedding.weight, resumed_embedding.weight)
    assert torch.equal(head.weight, resumed_head.weight)


def test_a_reward_model_without_its_lm_term_trains_sparse_rows_as_dense(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = quiet(
        model=str(tiny_model_dir),
        data=str(write_pairs(tmp_path / "pairs.jsonl", 12)),
        max_steps=4,
        batch_size=2,
        grad_accum=2,  # sparse gradients of two passes add up
        learning_rate=1e-3,
        weight_decay=0.01,
        max_grad_norm=0.5,
        logging_steps=1,
        eval_split=0.25,
        eval_steps=2,
        lm_weight=0.0,
    )
    sparse = RewardConfig(**options, output_dir=str(tmp_path / "sparse"))
    train(sparse, RewardObjective(sparse))
    monkeypatch.setattr(reward_objective, "use_sparse_embedding_grads", lambda model: False)
    dense = RewardConfig(**options, output_dir=str(tmp_path / "dense"))
    train(dense, RewardObjective(dense))

    state_bytes = {
        name: json.loads((tmp_path / name / "run.json").read_text())["state_bytes_per_process"]
        for name in ("sparse", "dense")
    }
    assert state_bytes["sparse"]["sparse_rows"] > 0 and state_bytes["dense"]["sparse_rows"] == 0
    assert_same_metrics(records_of(tmp_path / "dense", "train"), records_of(tmp_path / "sparse", "train"), tol=1e-5)
    assert_same_metrics(records_of(tmp_path / "dense", "eval"), records_of(tmp_path / "sparse", "eval"), tol=1e-5)
    a = load_file(tmp_path / "dense" / "final" / "model.safetensors")
    b = load_file(tmp_path / "sparse" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-5)


def test_only_an_unused_output_layer_gives_sparse_rows(tiny_model_dir: Path) -> None:
    from prefalign.models.loading import load_model

    model = load_model(str(tiny_model_dir), device="cpu")
    before = training_state_bytes(model)
    assert sparse_rows.use_sparse_embedding_grads(model)
    after = training_state_bytes(model)
    embedding = model.get_input_embeddings().weight
    size = embedding.numel() * embedding.element_size()
    assert after.sparse_rows == size and after.gradients == before.gradients - size
    assert "for the rows it trains" in after.describe()
    frozen = load_model(str(tiny_model_dir), device="cpu").requires_grad_(False)  # LoRA's base, say
    assert not sparse_rows.use_sparse_embedding_grads(frozen) and not frozen.get_input_embeddings().sparse


def test_a_closure_computes_the_gradients_the_step_then_takes() -> None:
    embedding, head = _models(True)
    twin_embedding, twin_head = copy.deepcopy(embedding), copy.deepcopy(head)
    optimizer = AdamWithSparseRows([embedding.weight, *head.parameters()], lr=0.05, fused=True)
    twin = AdamWithSparseRows([twin_embedding.weight, *twin_head.parameters()], lr=0.05, fused=True)

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        return _backward(embedding, head, STEPS[0])

    loss = optimizer.step(closure)
    _backward(twin_embedding, twin_head, STEPS[0])
    twin.step()
    assert loss is not None and loss.item() > 0
    assert torch.equal(embedding.weight, twin_embedding.weight) and torch.equal(head.weight, twin_head.weight)
