"""LoRA: a fresh adapter changes nothing, disabling it gives the base model back, save/merge round-trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prefalign.errors import ModelError
from prefalign.models.lora import adapter_disabled, apply_lora, is_lora, load_adapter, merged_copy, save_adapter
from prefalign.models.tiny import build_tiny_model, build_tiny_tokenizer


@pytest.fixture()
def model_and_ids() -> tuple[torch.nn.Module, torch.Tensor]:
    tokenizer = build_tiny_tokenizer()
    ids = torch.tensor([tokenizer("The capital of France is Paris.")["input_ids"]])
    return build_tiny_model(tokenizer, seed=0), ids


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _perturb_adapter(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)


def test_fresh_adapter_is_exactly_the_base_model(model_and_ids) -> None:
    model, ids = model_and_ids
    base = _logits(model, ids)
    peft_model = apply_lora(model, rank=4, alpha=8, dropout=0.0, target_modules=["all-linear"])
    assert is_lora(peft_model)
    assert torch.equal(_logits(peft_model, ids), base)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_disabled_adapter_is_the_reference(model_and_ids) -> None:
    model, ids = model_and_ids
    base = _logits(model, ids)
    peft_model = apply_lora(model, rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    _perturb_adapter(peft_model)
    adapted = _logits(peft_model, ids)
    assert not torch.allclose(adapted, base)
    with adapter_disabled(peft_model):
        assert torch.equal(_logits(peft_model, ids), base)
    assert torch.equal(_logits(peft_model, ids), adapted)  # re-enabled after the block


def test_save_reload_and_merge_give_the_same_logits(model_and_ids, tmp_path: Path) -> None:
    from peft import PeftModel

    model, ids = model_and_ids
    peft_model = apply_lora(model, rank=4, alpha=8, dropout=0.0, target_modules=["all-linear"])
    _perturb_adapter(peft_model)
    expected = _logits(peft_model, ids)
    save_adapter(peft_model, tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(build_tiny_model(build_tiny_tokenizer(), seed=0), tmp_path / "adapter")
    assert torch.allclose(_logits(reloaded, ids), expected, atol=1e-6)
    loaded = load_adapter(build_tiny_model(build_tiny_tokenizer(), seed=0), tmp_path / "adapter")
    assert any("forward" in vars(module) for module in loaded.modules())  # the fused LoRA forward, installed
    assert torch.allclose(_logits(loaded, ids), expected, atol=1e-6)
    merged = merged_copy(peft_model)
    assert not is_lora(merged) and is_lora(peft_model)  # the trained model itself is left as it was
    assert torch.allclose(_logits(merged, ids), expected, atol=1e-5)


def test_unknown_target_module_is_a_one_line_error(model_and_ids) -> None:
    model, _ = model_and_ids
    with pytest.raises(ModelError, match="cannot add LoRA"):
        apply_lora(model, rank=4, alpha=8, dropout=0.0, target_modules=["no_such_proj"])


def test_fast_dropout_draws_a_bernoulli_mask_at_the_rounded_rate_and_keeps_the_mean() -> None:
    from prefalign.models.dropout import FastDropout

    dropout = FastDropout(0.05)
    assert dropout.dropped == 3277 and dropout.scale == 65536 / (65536 - 3277)
    x = torch.rand(1024, 4096) + 0.5  # no zeros, so a zero in the output is a dropped value
    assert dropout.eval()(x) is x
    dropout.train()
    torch.manual_seed(0)
    out = dropout(x)
    kept = out != 0
    rate = 1 - kept.float().mean().item()
    assert abs(rate - 3277 / 65536) < 6 * (0.05 * 0.95 / x.numel()) ** 0.5  # six standard deviations
    torch.testing.assert_close(out[kept], x[kept] * dropout.scale, rtol=0, atol=0)
    assert abs(out.mean().item() / x.mean().item() - 1) < 2e-3  # unbiased: E[out] = x
    rows, columns = kept.float().mean(1), kept.float().mean(0)  # no structure along either axis
    assert rows.std() < 0.01 and columns.std() < 0.01
    torch.manual_seed(0)
    assert torch.equal(dropout(x), out)  # the global generator's state decides the mask: seeded runs repeat it
    assert not torch.equal(dropout(x), out)
    leaf = x.clone().requires_grad_()
    torch.manual_seed(0)
    dropout(leaf).sum().backward()
    torch.testing.assert_close(leaf.grad, kept.float() * dropout.scale, rtol=0, atol=0)


def test_apply_lora_uses_fast_dropout_everywhere(model_and_ids) -> None:
    from prefalign.models.dropout import FastDropout

    model, _ = model_and_ids
    wrapped = apply_lora(model, rank=4, alpha=8.0, dropout=0.1, target_modules=["all-linear"])
    dropouts = [d for m in wrapped.modules() if hasattr(m, "lora_dropout") for d in m.lora_dropout.values()]
    assert dropouts and all(isinstance(d, FastDropout) and d.p == 0.1 for d in dropouts)


def _peft_forward_back(model: torch.nn.Module) -> None:
    """Undo `use_fused_forward`: every LoRA layer runs peft's own forward again."""
    for module in model.modules():
        if "forward" in vars(module):
            del module.forward


def _loss_and_grads(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    torch.manual_seed(7)  # the dropout masks
    loss = model(input_ids=ids).logits.float().pow(2).mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_fused_lora_forward_computes_what_peft_does(model_and_ids) -> None:
    from prefalign.models.lora_forward import use_fused_forward

    model, ids = model_and_ids
    wrapped = apply_lora(model, rank=4, alpha=8.0, dropout=0.1, target_modules=["all-linear"])
    assert use_fused_forward(wrapped) > 0  # apply_lora installed it already; installing again is harmless
    _perturb_adapter(wrapped)
    wrapped.train()
    fused_loss, fused_grads = _loss_and_grads(wrapped, ids)
    _peft_forward_back(wrapped)
    peft_loss, peft_grads = _loss_and_grads(wrapped, ids)
    torch.testing.assert_close(fused_loss, peft_loss, rtol=1e-6, atol=0)
    for fused, plain in zip(fused_grads, peft_grads, strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-7)


def test_fused_lora_forward_leaves_other_cases_to_peft(model_and_ids) -> None:
    model, ids = model_and_ids
    base = _logits(model, ids)
    wrapped = apply_lora(model, rank=4, alpha=8.0, dropout=0.0, target_modules=["all-linear"])
    _perturb_adapter(wrapped)
    with adapter_disabled(wrapped):
        assert torch.equal(_logits(wrapped, ids), base)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_fused = _logits(wrapped, ids)
    _peft_forward_back(wrapped)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(_logits(wrapped, ids), autocast_fused)  # autocast: peft's own forward both times
