"""DPO training on the tiny model: ln 2 at step 1, learning, a frozen reference, the saved outputs, the loss types."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from prefalign.errors import PrefalignError
from prefalign.train.checkpoint import latest_checkpoint
from prefalign.train.config import DPOConfig
from prefalign.train.distributed import DistInfo
from prefalign.train.loop import train
from prefalign.train.objectives import DPOObjective
from test_train_support import (
    DPO_KEYS,
    TRAIN_ONLY_KEYS,
    quiet,
    read_records,
    records_of,
    single_thread,  # noqa: F401  (an autouse fixture: importing it applies it here)
    write_pairs,
)

LN2 = math.log(2)
SINGLE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def _load(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _assert_untrained(record: dict) -> None:
    """Policy == reference: the sigmoid loss is ln 2, every reward, the log-ratio and the KL are 0, and every pair's
    rewards tie, which counts half: accuracy 0.5."""
    assert abs(record["loss"] - LN2) < 1e-6
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logratio", "kl"):
        assert record.get(key, 0.0) == 0.0, key
    assert record["rewards/accuracies"] == 0.5


def test_full_finetune_learns_against_a_frozen_reference(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", 16)
    config = DPOConfig(
        **quiet(
            model=str(tiny_model_dir),
            data=str(data),
            output_dir=str(tmp_path / "run"),
            max_steps=16,
            learning_rate=1e-3,
            warmup_ratio=0.0,
            logging_steps=1,
            eval_split=0.25,
            eval_steps=8,
            plots=True,
        )
    )
    result = train(config, DPOObjective(config))
    out = result.output_dir

    train_records, eval_records = records_of(out, "train"), records_of(out, "eval")
    assert [r["step"] for r in eval_records] == [0, 8, 16]
    _assert_untrained(train_records[0])
    _assert_untrained(eval_records[0])
    for record in train_records:
        assert DPO_KEYS | TRAIN_ONLY_KEYS | {"pairs_per_second"} <= record.keys()
    for record in eval_records:
        assert record.keys() >= DPO_KEYS
    # It learns the one preference in the data: train loss falls, the validation reward gap grows.
    assert train_records[-1]["loss"] < 0.2 < LN2
    assert 0 < eval_records[1]["rewards/margins"] < eval_records[2]["rewards/margins"]
    assert eval_records[2]["rewards/accuracies"] == 1.0
    assert train_records[-1]["kl"] > 0

    # The reference is a frozen copy of the initial policy: eval mode, no gradients, weights untouched.
    reference = result.objective.reference.model
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    initial = _load(tiny_model_dir).state_dict()
    assert all(torch.equal(initial[name], value) for name, value in reference.state_dict().items())
    assert not torch.equal(initial["model.embed_tokens.weight"], result.model.state_dict()["model.embed_tokens.weight"])

    # Outputs: a loadable HF model with its tokenizer, run.json, summary.json, plots.
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    assert torch.allclose(_logits(_load(out / "final"), ids), _logits(result.model, ids), atol=1e-6)
    assert (out / "final" / "tokenizer.json").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["beta"] == 0.1 and run["command"] == "dpo"
    assert set(run["versions"]) == {"prefalign", "python", "torch", "transformers", "peft"}
    assert run["data_sha256"] == {str(data): hashlib.sha256(data.read_bytes()).hexdigest()}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 16 and summary["eval"]["rewards/margins"] == eval_records[-1]["rewards/margins"]
    assert {"loss.png", "reward_gap.png", "accuracy.png", "kl.png"} <= {p.name for p in (out / "plots").iterdir()}

    with pytest.raises(PrefalignError, match="already holds a run"):
        train(config, DPOObjective(config))


def test_lora_starts_at_ln2_and_its_adapter_reloads(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    config = DPOConfig(
        **quiet(
            model=str(tiny_model_dir),
            data=str(write_pairs(tmp_path / "pairs.jsonl", 8)),
            output_dir=str(tmp_path / "run"),
            lora=True,
            lora_rank=4,
            merge=True,
            epochs=2,
            learning_rate=1e-2,
            logging_steps=1,
        )
    )
    result = train(config, DPOObjective(config))
    assert result.steps == 4  # 2 epochs of 8 pairs in batches of 4
    records = read_records(result.output_dir)
    _assert_untrained(records[0])
    assert records[-1]["rewards/margins"] > 0

    ids = torch.tensor([[1, 40, 41, 42, 43]])
    expected = _logits(result.model, ids)
    reloaded = PeftModel.from_pretrained(_load(tiny_model_dir), result.output_dir / "final")
    assert torch.allclose(_logits(reloaded, ids), expected, atol=1e-6)
    assert torch.allclose(_logits(_load(result.output_dir / "final" / "merged"), ids), expected, atol=1e-5)
    # The reference (the base weights under the adapter) did not move.
    initial = _load(tiny_model_dir).state_dict()
    base = {
        n.replace("base_model.model.", "").replace("base_layer.", ""): p
        for n, p in result.model.state_dict().items()
        if "lora_" not in n
    }
    assert all(torch.equal(initial[name], value) for name, value in base.items() if name in initial)
    assert len([name for name in base if name in initial]) == len(initial)


@pytest.mark.parametrize("lora", [False, True])
def test_precomputed_reference_matches_live_and_is_read_from_cache(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    lora: bool,
) -> None:
    monkeypatch.setenv("PREFALIGN_HOME", str(tmp_path / "home"))
    data = write_pairs(tmp_path / "pairs.jsonl", 8)
    options = quiet(
        model=str(tiny_model_dir),
        data=str(data),
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        eval_split=0.25,
        lora=lora,
        lora_dropout=0.0,
    )

    def run(name: str, **extra: object) -> tuple[list[dict], DPOObjective]:
        config = DPOConfig(**options, output_dir=str(tmp_path / name), **extra)
        objective = DPOObjective(config)
        train(config, objective)
        return read_records(tmp_path / name), objective

    live, _ = run("live")
    precomputed, objective = run("precomputed", precompute_ref=True)
    assert objective.reference is None  # no reference model kept in memory
    assert objective.precompute_seconds > 0
    assert "computing reference log-probs of 8 pairs" in capsys.readouterr().err
    for a, b in zip(live, precomputed, strict=True):
        assert "kl" in a and "kl" not in b  # the exact KL needs the reference's logits, which a cache does not hold
        for key in b.keys() - {"tokens_per_second", "pairs_per_second", "step", "split"}:
            assert abs(a[key] - b[key]) <= 1e-6 * max(1.0, abs(a[key])), key

    # The second run reads the cache instead of running the reference: shift the cached chosen log-probs by +1 and
    # the first step's rewards become beta * (0 - 1) on chosen, which no reference forward pass could produce.
    (cache,) = (tmp_path / "home" / "cache" / "ref-logps").glob("*.pt")
    cached = torch.load(cache, weights_only=True)
    torch.save({"logps": cached["logps"] + torch.tensor([1.0, 0.0])}, cache)
    shifted, _ = run("from-cache", precompute_ref=True)
    assert "read from" in capsys.readouterr().err
    assert shifted[1]["split"] == "train" and abs(shifted[1]["rewards/chosen"] + 0.1) < 1e-6
    assert abs(shifted[1]["rewards/rejected"]) < 1e-6
    # The validation before the first update runs no model: the policy is the reference, so its log-probs are the
    # cached ones (shifted here) and every reward is 0.
    assert shifted[0]["split"] == "eval" and shifted[0]["step"] == 0
    assert abs(shifted[0]["logps/chosen"] - (precomputed[0]["logps/chosen"] + 1)) < 1e-5
    _assert_untrained(shifted[0])


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_takes_the_same_steps(tiny_model_dir: Path, tmp_path: Path, lora: bool) -> None:
    from prefalign.scoring.run import unwrap
    from prefalign.train.memory import decoder_layers

    data = write_pairs(tmp_path / "pairs.jsonl", 8)
    options = quiet(
        model=str(tiny_model_dir),
        data=str(data),
        max_steps=2,
        learning_rate=1e-2 if lora else 1e-3,
        logging_steps=1,
        lora=lora,
        lora_rank=4,
    )

    flushing: list[bool] = []  # whether denormals were flushed to zero, at each loss computed while training

    class FlushProbe(DPOObjective):
        def loss(self, model: torch.nn.Module, batch: object) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            flushing.append(float(torch.tensor(1e-39) * 1.0) == 0.0)
            return super().loss(model, batch)

    def run(name: str, **extra: object) -> tuple[list[dict], torch.nn.Module]:
        config = DPOConfig(**options, output_dir=str(tmp_path / name), **extra)
        result = train(config, FlushProbe(config))
        return records_of(tmp_path / name, "train"), result.model

    plain, plain_model = run("plain")
    # and trimming the heap every layer of the backward pass leaves the steps alone too
    checkpointed, checkpointed_model = run("checkpointed", gradient_checkpointing=True, trim_heap_every_layers=1)
    assert flushing and all(flushing)  # training on CPU flushes denormals (they stall CPU arithmetic)...
    assert float(torch.tensor(1e-39) * 1.0) != 0.0  # ...and restores the setting after
    hooks = [hook for layer in decoder_layers(checkpointed_model) for hook in layer._forward_hooks.values()]
    assert not [hook for hook in hooks if "trim_in_backward" in hook.__qualname__]  # the trim hooks are removed
    assert unwrap(checkpointed_model).is_activation_checkpointing
    assert not unwrap(plain_model).is_activation_checkpointing
    assert len(plain) == len(checkpointed) == 2 and plain[-1]["loss"] != plain[0]["loss"]  # it did learn
    for a, b in zip(plain, checkpointed, strict=True):
        for key in a.keys() - {"tokens_per_second", "pairs_per_second", "split"}:
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), key
    for (name, p), (_, q) in zip(plain_model.named_parameters(), checkpointed_model.named_parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name


@pytest.mark.parametrize(
    ("loss", "label_smoothing", "expected"),
    [
        ("sigmoid", 0.0, LN2),
        ("ipo", 0.0, (1 / (2 * 0.1)) ** 2),
        ("hinge", 0.0, 1.0),
        ("cdpo", 0.2, LN2),
        ("robust", 0.2, LN2),
        # At policy == reference every log-ratio is 0, which fixes each of these by hand:
        ("sigmoid_norm", 0.0, LN2),
        ("dpop", 0.0, LN2),  # no penalty while log pi(y_w) = log ref(y_w)
        ("apo_zero", 0.0, 1.0),  # (1 - 1/2) + 1/2
        ("apo_down", 0.0, 1.0),  # 1/2 + (1 - 1/2)
        ("bco_pair", 0.0, 2 * LN2),  # every reward equals the mean reward delta = 0
        ("exo_pair", 0.0, 0.5 * (2 * -LN2 - math.log1p(-1e-3) - math.log(1e-3))),
        ("nca_pair", 0.0, 2 * LN2),  # ln 2 + ln 2 / 2 + ln 2 / 2
        ("sigmoid:1.0,apo_zero:0.5", 0.0, LN2 + 0.5),
    ],
)
def test_every_loss_at_policy_equals_reference(
    tiny_model_dir: Path, tmp_path: Path, loss: str, label_smoothing: float, expected: float
) -> None:
    from prefalign.models.loading import load_model, load_tokenizer

    config = DPOConfig(
        model=str(tiny_model_dir),
        data=str(write_pairs(tmp_path / "p.jsonl", 4)),
        output_dir="x",
        loss=loss,
        label_smoothing=label_smoothing,
    )
    objective = DPOObjective(config)
    items, _ = objective.load(config.data, load_tokenizer(config.model))
    model = load_model(config.model, device="cpu")
    objective.setup(model, {config.data: items}, SINGLE)
    loss_sum, sums = objective.loss(model, objective.collate(items))
    metrics = objective.metrics({key: float(value) for key, value in sums.items()})
    assert abs(float(loss_sum.detach()) / 4 - expected) < 1e-5 and abs(metrics["loss"] - expected) < 1e-5
    assert metrics["rewards/margins"] == 0.0


def test_an_sft_term_adds_the_chosen_nll_per_token(tiny_model_dir: Path, tmp_path: Path) -> None:
    from prefalign.models.loading import load_model, load_tokenizer
    from prefalign.scoring.run import score_completions

    config = DPOConfig(
        model=str(tiny_model_dir),
        data=str(write_pairs(tmp_path / "p.jsonl", 4)),
        output_dir="x",
        loss="sigmoid,sft:0.5",
    )
    objective = DPOObjective(config)
    items, _ = objective.load(config.data, load_tokenizer(config.model))
    model = load_model(config.model, device="cpu")
    objective.setup(model, {config.data: items}, SINGLE)
    batch = objective.collate(items)
    _, sums = objective.loss(model, batch)
    metrics = objective.metrics({key: float(value) for key, value in sums.items()})
    with torch.no_grad():
        _, logps = score_completions(model, batch.pairs)
    per_token = -(logps.sum_logps[:4] / logps.num_tokens[:4]).mean()
    assert abs(metrics["loss/sft"] - float(per_token)) < 1e-5 and abs(metrics["loss/sigmoid"] - LN2) < 1e-5
    assert abs(metrics["loss"] - (LN2 + 0.5 * float(per_token))) < 1e-5


def test_ref_model_is_another_frozen_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    from prefalign.models.loading import load_model, load_tokenizer
    from prefalign.models.tiny import save_tiny_model

    other = save_tiny_model(tmp_path / "other", seed=1)
    config = DPOConfig(
        model=str(tiny_model_dir), data=str(write_pairs(tmp_path / "p.jsonl", 4)), output_dir="x", ref_model=str(other)
    )
    objective = DPOObjective(config)
    items, _ = objective.load(config.data, load_tokenizer(config.model))
    model = load_model(config.model, device="cpu")
    objective.setup(model, {config.data: items}, SINGLE)
    reference = objective.reference.model
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    embedding = "model.embed_tokens.weight"
    assert torch.equal(reference.state_dict()[embedding], _load(other).state_dict()[embedding])
    assert not torch.equal(reference.state_dict()[embedding], model.state_dict()[embedding])
    _, sums = objective.loss(model, objective.collate(items))
    metrics = objective.metrics({key: float(value) for key, value in sums.items()})
    assert metrics["kl"] > 0.01 and abs(metrics["logratio"]) > 0.1 and abs(metrics["loss"] - LN2) > 1e-4


def test_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    # A learning rate of 1e30 makes the first update blow the weights up; the next loss cannot be finite.
    config = DPOConfig(
        **quiet(
            model=str(tiny_model_dir),
            data=str(write_pairs(tmp_path / "pairs.jsonl", 8)),
            output_dir=str(tmp_path / "run"),
            max_steps=5,
            learning_rate=1e30,
            warmup_ratio=0.0,
            save_steps=1,
            keep_checkpoints=5,
            logging_steps=1,
        )
    )
    with pytest.raises(PrefalignError) as error:
        train(config, DPOObjective(config))
    message = str(error.value)
    assert "\n" not in message and "non-finite" in message
    failed_step = int(message.split(":")[0].removeprefix("step "))
    # The weights after step failed - 1 made the loss non-finite: that step's checkpoint is never written.
    checkpoint = latest_checkpoint(tmp_path / "run")
    if failed_step > 2:
        assert checkpoint is not None and checkpoint.name == f"step-{failed_step - 2}"
        assert str(checkpoint) in message and "--resume" in message
    else:
        assert checkpoint is None and "no checkpoint saved yet" in message
    assert not (tmp_path / "run" / "final").exists()


def test_bf16_precision_on_a_cpu_trains_near_fp32_and_caches_its_own_reference(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefalign.train.precision import uses_bf16

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [uses_bf16(cpu, p) for p in ("auto", "bf16", "fp32")] == [False, True, False]
    assert [uses_bf16(cuda, p) for p in ("auto", "bf16", "fp32")] == [True, True, False]

    monkeypatch.setenv("PREFALIGN_HOME", str(tmp_path / "home"))
    data = write_pairs(tmp_path / "pairs.jsonl", 8)
    options = quiet(
        model=str(tiny_model_dir), data=str(data), max_steps=2, learning_rate=1e-3, logging_steps=1, eval_split=0.25
    )
    runs = {}
    for precision in ("fp32", "bf16"):
        config = DPOConfig(**options, output_dir=str(tmp_path / precision), precision=precision, precompute_ref=True)
        train(config, DPOObjective(config))
        runs[precision] = read_records(tmp_path / precision)
    # Each precision caches the reference it stands in for: at step 0 the policy is the reference, and a bf16 policy
    # scored against fp32 reference log-probs would start with rewards of bf16 rounding, not 0.
    assert len(list((tmp_path / "home" / "cache" / "ref-logps").glob("*.pt"))) == 2  # one per precision
    for precision, records in runs.items():
        assert records[0]["split"] == "eval" and abs(records[0]["loss"] - LN2) < 1e-6, precision
        assert records[0]["rewards/margins"] == 0.0, precision
    fp32, bf16 = runs["fp32"][-1], runs["bf16"][-1]
    assert fp32["step"] == bf16["step"] == 2
    assert bf16["logps/chosen"] != fp32["logps/chosen"]  # bf16 really computed: it rounds
    assert abs(bf16["logps/chosen"] - fp32["logps/chosen"]) < 0.02 * abs(fp32["logps/chosen"])
    assert abs(bf16["loss"] - fp32["loss"]) < 0.02
