"""The tiny test model: a real tokenizer, deterministic weights, a directory that reloads like any HF model."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefalign.models.tiny import build_tiny_model, build_tiny_tokenizer, save_tiny_model

TEXT = "Human: Why is the sky blue?\nAssistant: Sunlight is scattered by the air. Ünïcødé ✓ 42%"


def test_tokenizer_round_trips_text_and_merges_words():
    tok = build_tiny_tokenizer()
    ids = tok(TEXT)["input_ids"]
    assert tok.decode(ids) == TEXT
    # A trained BPE, not a byte tokenizer: common words are single tokens.
    english = "The weather was cold, so we stayed inside and read books."
    assert len(tok(english)["input_ids"]) < len(english) / 2
    assert len(tok(" the")["input_ids"]) == 1


def test_tokenizer_special_tokens_match_smollm2_layout():
    tok = build_tiny_tokenizer()
    assert [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2]
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    assert len(tok) == 512
    assert tok("hello")["input_ids"][0] != tok.bos_token_id  # nothing is prepended
    assert tok("<|im_start|>user")["input_ids"][0] == 1  # specials are matched whole in text


def test_chat_template_renders_chatml():
    tok = build_tiny_tokenizer()
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_is_identical_in_a_fresh_process():
    # The BPE trainer runs in Rust with hash maps; the merges must not depend on the process.
    script = "from prefalign.models.tiny import build_tiny_tokenizer; print(build_tiny_tokenizer()._tokenizer.to_str())"
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    assert json.loads(other) == json.loads(build_tiny_tokenizer()._tokenizer.to_str())


def test_model_is_deterministic_per_seed_and_leaves_global_rng_alone():
    tok = build_tiny_tokenizer()
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny_model(tok, seed=0)
    assert torch.equal(torch.rand(3), expected_draw)
    b = build_tiny_model(tok, seed=0)
    c = build_tiny_model(tok, seed=1)
    ids = torch.tensor([tok(TEXT)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)
        assert not torch.allclose(a(ids).logits, c(ids).logits)
    assert a.dtype == torch.float32 and not a.training
    assert a.config.tie_word_embeddings and a.lm_head.weight.data_ptr() == a.model.embed_tokens.weight.data_ptr()
    assert a.config.vocab_size == len(tok)


def test_saved_dir_reloads_with_identical_logits(tiny_model_dir):
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok.chat_template is not None and tok.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == 2 and model.generation_config.pad_token_id == 2
    ids = torch.tensor([tok(TEXT)["input_ids"]])
    assert ids.tolist()[0] == build_tiny_tokenizer()(TEXT)["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, build_tiny_model(build_tiny_tokenizer(), seed=0)(ids).logits)


def test_save_is_idempotent(tmp_path):
    first = save_tiny_model(tmp_path / "m", seed=3)
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    second = save_tiny_model(tmp_path / "m", seed=3)
    assert second == first
    assert {p.name: p.read_bytes() for p in second.iterdir()} == before
