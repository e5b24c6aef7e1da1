"""The reward model: its head, where it reads the reward, and a save that reloads exactly (full and LoRA)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prefalign.errors import ModelError
from prefalign.models.loading import load_model, load_tokenizer
from prefalign.models.lora import apply_lora
from prefalign.models.reward import (
    HEAD_FILE,
    META_FILE,
    RewardModel,
    last_token_index,
    load_reward_model,
    load_reward_tokenizer,
)
from test_train_support import single_thread  # noqa: F401  (an autouse fixture: importing it applies it here)


def _reward_model(model_dir: Path, *, lora: bool = False, seed: int = 0) -> RewardModel:
    torch.manual_seed(seed)
    lm = load_model(str(model_dir), device="cpu")
    if lora:
        lm = apply_lora(lm, rank=4, alpha=8, dropout=0.0, target_modules=["all-linear"])
        with torch.no_grad():  # B starts at 0 (the adapter is a no-op): give it weights a lost adapter would show
            for name, param in lm.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.5)
    return RewardModel(lm, str(model_dir)).eval()


def _batch(model_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer = load_tokenizer(str(model_dir))
    texts = ["Is water wet? Yes, it is.", "Why is the sky blue? Light scatters off the air.", "Hello"]
    rows = [tokenizer(text)["input_ids"] for text in texts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return ids, mask


def test_head_is_one_output_without_bias(tiny_model_dir: Path) -> None:
    model = _reward_model(tiny_model_dir)
    hidden = model.config.hidden_size
    assert model.reward_head.bias is None
    assert tuple(model.reward_head.weight.shape) == (1, hidden)
    assert model.reward_head.weight.requires_grad
    with pytest.raises(ModelError, match="bias=False"):
        RewardModel(model.lm, "x", torch.nn.Linear(hidden, 1, bias=True))


def test_reward_is_the_head_on_the_final_hidden_state_of_the_last_real_token(tiny_model_dir: Path) -> None:
    model = _reward_model(tiny_model_dir)
    ids, mask = _batch(tiny_model_dir)
    with torch.no_grad():
        rewards = model(ids, mask).rewards
        for row in range(ids.shape[0]):
            length = int(mask[row].sum())
            alone = model.lm(input_ids=ids[row : row + 1, :length], output_hidden_states=True).hidden_states[-1]
            by_hand = float(alone[0, -1] @ model.reward_head.weight[0])
            assert rewards[row].item() == pytest.approx(by_hand, abs=1e-5)


def test_padding_and_tokens_after_the_last_real_one_do_not_change_the_reward(tiny_model_dir: Path) -> None:
    model = _reward_model(tiny_model_dir)
    ids, mask = _batch(tiny_model_dir)
    with torch.no_grad():
        rewards = model(ids, mask).rewards
        wider_ids = torch.cat([ids, torch.full((ids.shape[0], 5), 7)], dim=1)  # more padding, and not the pad id
        wider_mask = torch.cat([mask, torch.zeros((ids.shape[0], 5), dtype=torch.long)], dim=1)
        torch.testing.assert_close(model(wider_ids, wider_mask).rewards, rewards, atol=1e-5, rtol=0)
        scrambled = ids.clone()
        scrambled[mask == 0] = 3  # the padded positions of the shorter rows
        torch.testing.assert_close(model(scrambled, mask).rewards, rewards, atol=1e-5, rtol=0)
        # ...while a real token does change it (so the test above could fail).
        changed = ids.clone()
        changed[0, int(mask[0].sum()) - 2] = 5
        assert abs(model(changed, mask).rewards[0] - rewards[0]) > 1e-4


def test_last_token_index_for_right_and_left_padding() -> None:
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0], [0, 0, 1, 1]])
    assert last_token_index(mask).tolist() == [1, 3, 2, 3]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_saved_reward_model_reloads_with_the_same_rewards(tiny_model_dir: Path, tmp_path: Path, lora: bool) -> None:
    model = _reward_model(tiny_model_dir, lora=lora, seed=1)
    ids, mask = _batch(tiny_model_dir)
    with torch.no_grad():
        expected = model(ids, mask).rewards
    saved = model.save_pretrained(tmp_path / "rm")
    assert (saved / META_FILE).is_file() and (saved / HEAD_FILE).is_file()
    assert (saved / "adapter_config.json").is_file() == lora
    assert (saved / "config.json").is_file() == (not lora)  # LoRA: the adapter only, the base model is named

    loaded = load_reward_model(saved, device="cpu")
    assert loaded.is_lora == lora
    torch.testing.assert_close(loaded.reward_head.weight, model.reward_head.weight, atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask).rewards, expected, atol=1e-5, rtol=0)
    # Without the adapter (or with another head) the rewards differ: the comparison above is not vacuous.
    other = _reward_model(tiny_model_dir, lora=False, seed=2)
    with torch.no_grad():
        assert (other(ids, mask).rewards - expected).abs().max() > 1e-3
    assert load_reward_tokenizer(saved).pad_token_id == load_tokenizer(str(tiny_model_dir)).pad_token_id


def test_loading_a_directory_that_is_not_a_reward_model_says_so(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelError, match="not a reward model saved by `prefalign rm train`"):
        load_reward_model(tiny_model_dir)


def _file_sizes(directory: Path) -> dict[str, int]:
    return {p.relative_to(directory).as_posix(): p.stat().st_size for p in directory.rglob("*") if p.is_file()}


def test_lora_reward_model_saves_adapter_and_head_only_and_peft_alone_rebuilds_it(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = _reward_model(tiny_model_dir, lora=True, seed=1)
    ids, mask = _batch(tiny_model_dir)
    with torch.no_grad():
        expected = model(ids, mask).rewards
    saved = model.save_pretrained(tmp_path / "rm")

    sizes = _file_sizes(saved)
    assert {"adapter_config.json", "adapter_model.safetensors", HEAD_FILE, META_FILE} <= set(sizes)
    assert not {"model.safetensors", "pytorch_model.bin", "config.json"} & set(sizes)
    base_weights = (tiny_model_dir / "model.safetensors").stat().st_size
    assert sum(sizes.values()) < base_weights / 4  # rank-4 adapter + head: a fraction of the model
    meta = json.loads((saved / META_FILE).read_text())
    assert meta["adapter"] is True and meta["base_model"] == str(tiny_model_dir)
    assert meta["hidden_size"] == model.config.hidden_size

    # Standard files: peft and safetensors alone (no prefalign) give the same rewards.
    lm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(meta["base_model"]), str(saved)).eval()
    weight = load_file(str(saved / HEAD_FILE))["weight"]
    assert tuple(weight.shape) == (1, meta["hidden_size"])
    with torch.no_grad():
        final = lm(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        by_hand = final[torch.arange(ids.shape[0]), last_token_index(mask)] @ weight[0]
    torch.testing.assert_close(by_hand, expected, atol=1e-5, rtol=0)


def test_merged_copy_saves_a_standalone_full_reward_model_with_the_same_rewards(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = _reward_model(tiny_model_dir, lora=True, seed=1)
    ids, mask = _batch(tiny_model_dir)
    with torch.no_grad():
        expected = model(ids, mask).rewards
    adapter_dir = model.save_pretrained(tmp_path / "adapter")
    merged_dir = model.merged_copy().save_pretrained(tmp_path / "merged")
    assert model.is_lora  # merging a copy leaves the trained model as it was

    assert (merged_dir / "config.json").is_file() and (merged_dir / "model.safetensors").is_file()
    assert not (merged_dir / "adapter_config.json").exists()
    assert json.loads((merged_dir / META_FILE).read_text())["adapter"] is False
    from_adapter, merged = load_reward_model(adapter_dir), load_reward_model(merged_dir)
    assert from_adapter.is_lora and not merged.is_lora
    with torch.no_grad():
        torch.testing.assert_close(from_adapter(ids, mask).rewards, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(merged(ids, mask).rewards, expected, atol=1e-5, rtol=0)
