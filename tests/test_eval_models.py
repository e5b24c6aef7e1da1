"""Models under evaluation: identities that key the cache, LoRA adapter and run directories, and the KL estimate."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from prefalign.evaluate.kl import kl_from_base
from prefalign.evaluate.models import DigestMemo, EvalModel, resolve_source
from prefalign.evaluate.prompt_set import EvalPrompt
from prefalign.generate import GenerationConfig, generate
from prefalign.models.loading import load_model

PROMPTS = [EvalPrompt("a", "Why is the sky blue?"), EvalPrompt("b", "Tell me about bread.")]


def test_identity_follows_the_files_not_the_path(tiny_model_dir: Path, tmp_path: Path):
    digests = DigestMemo(tmp_path / "digests.json")
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    original = EvalModel("a", str(tiny_model_dir), digests).identity
    assert EvalModel("b", str(copy), digests).identity == original
    assert (tmp_path / "digests.json").is_file()  # remembered for the next run
    (copy / "generation_config.json").write_text('{"eos_token_id": 2}')
    assert EvalModel("c", str(copy), DigestMemo(tmp_path / "digests.json")).identity != original


def test_lora_adapter_and_run_directories(tiny_model_dir: Path, tmp_path: Path):
    from prefalign.models.lora import apply_lora, save_adapter

    torch.manual_seed(0)
    peft_model = apply_lora(load_model(str(tiny_model_dir)), rank=4, alpha=8, dropout=0.0, target_modules=["q_proj"])
    with torch.no_grad():  # a fresh adapter is the identity (B = 0); make it change something
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    run = tmp_path / "run"
    save_adapter(peft_model, run / "final")
    source = resolve_source(str(run))  # a training run directory means its final model
    assert source.adapter == str(run / "final") and source.path == str(tiny_model_dir)

    model = EvalModel("dpo", str(run), DigestMemo(tmp_path / "digests.json"))
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.inference_mode():
        expected = peft_model(input_ids=ids).logits
        plain = load_model(str(tiny_model_dir))(input_ids=ids).logits
        got = model.model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)  # merged adapter == adapter applied
    assert not torch.allclose(got, plain, atol=1e-3)
    assert model.loads == 1
    assert model.identity != EvalModel("base", str(tiny_model_dir), DigestMemo(tmp_path / "d.json")).identity


def test_kl_of_a_model_from_itself_is_zero_and_from_another_is_positive(tiny_model_dir: Path, tmp_path: Path):
    digests = DigestMemo(tmp_path / "digests.json")
    policy = EvalModel("sft", str(tiny_model_dir), digests)
    other_dir = tmp_path / "other"
    model = load_model(str(tiny_model_dir))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, 0.2, generator=torch.Generator().manual_seed(1))
    model.save_pretrained(other_dir)
    policy.tokenizer.save_pretrained(other_dir)
    other = EvalModel("base", str(other_dir), digests)
    texts = [p.prompt for p in PROMPTS]
    config = GenerationConfig(max_new_tokens=6, temperature=1.0, seed=3, batch_size=1)
    samples = [
        generate(policy.model, policy.tokenizer, texts, replace(config, seed=3 + j), progress=False) for j in (0, 1)
    ]

    same = kl_from_base(policy, EvalModel("copy", str(tiny_model_dir), digests), texts, config, 2, progress=False)
    assert same.kl == [0.0, 0.0] and same.logratio == [0.0, 0.0]
    assert same.tokens == [(len(a.token_ids) + len(b.token_ids)) / 2 for a, b in zip(*samples)]

    drift = kl_from_base(policy, other, texts, config, 2, progress=False)
    assert all(k > 0 for k in drift.kl)
    assert drift.logratio != pytest.approx(drift.kl)  # a different estimator of the same quantity
    one_draw = kl_from_base(policy, other, texts, config, 1, progress=False)
    assert one_draw.kl != pytest.approx(drift.kl)  # the second draw counts
    together = kl_from_base(policy, other, texts, replace(config, batch_size=2), 2, progress=False)
    assert together.kl == pytest.approx(drift.kl, rel=1e-4)  # batching (and padding) changes nothing
