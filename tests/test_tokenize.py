"""Tokenization of preference and SFT data: prompt/completion boundaries, truncation, drops, with real tokenizers."""

from __future__ import annotations

import argparse

import pytest
from transformers import AutoTokenizer

from prefalign.config import add_config_args, config_from_args
from prefalign.data.records import PreferenceRecord
from prefalign.data.tokenize import (
    EMPTY_COMPLETION,
    IDENTICAL_AFTER_TRUNCATION,
    IDENTICAL_COMPLETIONS,
    NO_ROOM_FOR_COMPLETION,
    TokenizeConfig,
    prompt_token_ids,
    tokenize_pair,
    tokenize_preferences,
    tokenize_sft,
    tokenize_sft_examples,
)
from prefalign.errors import DataError, PrefalignError
from prefalign.models.tiny import build_tiny_tokenizer

IM_END = 2

CONVERSATION = [
    {"role": "user", "content": "How do I bake bread at home?"},
    {"role": "assistant", "content": "Mix flour, water, salt and yeast, then knead the dough."},
    {"role": "user", "content": "How long should it rise?"},
]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def tokenize_completion(prompt, completion, tok, prompt_format="auto") -> tuple[list[int], list[int]]:
    """(prompt_ids, completion_ids) of one prompt + completion, as `tokenize_sft` splits them when nothing is cut."""
    example = tokenize_sft(prompt, completion, tok, TokenizeConfig(prompt_format=prompt_format))
    assert not (example.prompt_truncated or example.completion_truncated or example.dropped)
    return example.prompt_ids, example.completion_ids


def chat_text(tok, messages, **kwargs) -> str:
    return tok.apply_chat_template(messages, tokenize=False, **kwargs)


def test_chat_prompt_plus_completion_is_the_full_conversation_up_to_im_end(tok):
    answer = "About an hour, until it doubles in size."
    prompt_ids, completion_ids = tokenize_completion(CONVERSATION, answer, tok)
    full_text = chat_text(tok, [*CONVERSATION, {"role": "assistant", "content": answer}])
    assert full_text.endswith("<|im_end|>\n")
    assert prompt_ids + completion_ids == tok(full_text.removesuffix("\n"))["input_ids"]
    # No boundary merge in ChatML: the split is exactly the generation prompt the generator uses.
    assert prompt_ids == prompt_token_ids(CONVERSATION, tok)
    assert tok.decode(prompt_ids).endswith("How long should it rise?<|im_end|>\n<|im_start|>assistant\n")
    assert completion_ids[-1] == IM_END
    assert tok.decode(completion_ids) == answer + "<|im_end|>"


def test_completion_as_assistant_messages_equals_completion_as_string(tok):
    as_string = tokenize_completion(CONVERSATION, "About an hour.", tok)
    as_messages = tokenize_completion(CONVERSATION, [{"role": "assistant", "content": "About an hour."}], tok)
    assert as_string == as_messages


def test_string_prompt_is_one_user_turn_with_a_chat_template_and_plain_text_in_raw(tok):
    question = "Why is the sky blue?"
    assert prompt_token_ids(question, tok) == prompt_token_ids([{"role": "user", "content": question}], tok)
    assert tok.decode(prompt_token_ids(question, tok, "chat")) == (
        "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompt_token_ids(question, tok, "raw") == tok(question)["input_ids"]
    prompt_ids, completion_ids = tokenize_completion(question, " Sunlight is scattered.", tok, "raw")
    assert prompt_ids + completion_ids == tok(question + " Sunlight is scattered.")["input_ids"] + [IM_END]


def test_auto_falls_back_to_raw_without_a_chat_template_and_chat_then_refuses():
    plain = build_tiny_tokenizer()
    plain.chat_template = None
    assert prompt_token_ids("Hello", plain) == plain("Hello")["input_ids"]
    with pytest.raises(PrefalignError, match="no chat template"):
        prompt_token_ids(CONVERSATION, plain)
    with pytest.raises(PrefalignError, match="no chat template"):
        prompt_token_ids("Hello", plain, "chat")


def test_raw_format_refuses_messages_naming_the_record(tok):
    record = PreferenceRecord(CONVERSATION, "Yes.", "No.", location="data.jsonl:7")
    with pytest.raises(DataError, match=r"^data.jsonl:7: prompt_format 'raw' takes string prompts"):
        tokenize_pair(record, tok, TokenizeConfig(prompt_format="raw"))
    record = PreferenceRecord("Hi", [{"role": "assistant", "content": "Yes."}], "No.", location="data.jsonl:8")
    with pytest.raises(DataError, match=r"^data.jsonl:8: .*string completions"):
        tokenize_pair(record, tok, TokenizeConfig(prompt_format="raw"))


def test_boundary_merge_keeps_the_full_texts_tokens(tok):
    prompt, completion = "Answer: ", "yes"
    alone = tok(prompt)["input_ids"]
    full = tok(prompt + completion)["input_ids"]
    assert full[: len(alone)] != alone, "the case must really merge across the boundary ('Ġ' + 'yes' -> 'Ġy', 'es')"
    prompt_ids, completion_ids = tokenize_completion(prompt, completion, tok, "raw")
    assert prompt_ids + completion_ids == [*full, IM_END]
    assert prompt_ids == alone[:-1]  # split at the longest common prefix: the lone space moved into the completion
    assert tok.decode(completion_ids) == " yes<|im_end|>"
    # Without the trailing space nothing merges and the prompt keeps all its own tokens.
    assert tokenize_completion("Answer:", " yes", tok, "raw") == (tok("Answer:")["input_ids"], [*full[3:], IM_END])


def test_pair_shares_the_shortest_prompt_when_only_one_side_merges(tok):
    # "Answer: " + "yes" merges the trailing space into " y"; "Answer: " + "?" does not.
    assert len(tokenize_completion("Answer: ", "yes", tok, "raw")[0]) == 3
    assert len(tokenize_completion("Answer: ", "?", tok, "raw")[0]) == 4
    pair = tokenize_pair(PreferenceRecord("Answer: ", "yes", "?", "f:1"), tok, TokenizeConfig(prompt_format="raw"))
    assert pair.prompt_ids == tok("Answer:")["input_ids"]
    assert pair.prompt_ids + pair.chosen_ids == tok("Answer: yes")["input_ids"] + [IM_END]
    assert pair.prompt_ids + pair.rejected_ids == tok("Answer: ?")["input_ids"] + [IM_END]
    assert not pair.dropped


def test_long_prompt_keeps_its_end_and_completions_fit_max_length(tok):
    long_conversation = CONVERSATION * 6
    full_prompt = prompt_token_ids(long_conversation, tok)
    record = PreferenceRecord(long_conversation, "About an hour.", "Forever and ever, never bake it.", "f:2")
    config = TokenizeConfig(max_length=40, max_prompt_length=30)
    pair = tokenize_pair(record, tok, config)
    assert len(full_prompt) > 30
    assert pair.prompt_truncated and pair.prompt_ids == full_prompt[-30:]
    assert tok.decode(pair.prompt_ids).endswith("<|im_start|>assistant\n")
    _, chosen = tokenize_completion(long_conversation, "About an hour.", tok)
    _, rejected = tokenize_completion(long_conversation, "Forever and ever, never bake it.", tok)
    assert len(rejected) > 10 >= len(chosen)
    assert pair.completion_truncated and not pair.dropped
    assert pair.chosen_ids == chosen and pair.rejected_ids == rejected[:10]
    assert pair.rejected_ids[-1] != IM_END  # a cut completion has no end of turn: the model must not learn to stop


def test_untruncated_pair_reports_nothing(tok):
    pair = tokenize_pair(PreferenceRecord("Hi", "Hello!", "Go away.", "f:3"), tok, TokenizeConfig())
    assert (pair.prompt_truncated, pair.completion_truncated, pair.dropped, pair.drop_reason) == (
        False,
        False,
        False,
        None,
    )
    assert pair.location == "f:3"


def test_drops_are_counted_by_reason_with_locations(tok):
    long_prompt = " ".join(["The weather was cold and rainy."] * 20)
    records = [
        PreferenceRecord("Hi", "Hello there, friend.", "Go away.", "d.jsonl:1"),
        PreferenceRecord("Hi", "Ok.", "Ok.", "d.jsonl:2"),
        PreferenceRecord("Hi", "", "No.", "d.jsonl:3"),
        PreferenceRecord("Hi", "Hello there, friend. Yes.", "Hello there, friend. No.", "d.jsonl:4"),
        PreferenceRecord(long_prompt, "Yes.", "No.", "d.jsonl:5"),
        PreferenceRecord("Hi", "Hello there, my good friend.", "Hi.", "d.jsonl:6"),
    ]
    prompt_len = len(prompt_token_ids("Hi", tok))
    # Room for 4 completion tokens after a short prompt; the long prompt is cut to 16 and leaves no room at all.
    config = TokenizeConfig(max_length=prompt_len + 4, max_prompt_length=prompt_len + 4)
    kept, report = tokenize_preferences(records, tok, config)
    assert [p.location for p in kept] == ["d.jsonl:1", "d.jsonl:6"]
    assert report.records == 6 and report.kept == 2
    assert dict(report.dropped) == {
        IDENTICAL_COMPLETIONS: 1,
        EMPTY_COMPLETION: 1,
        IDENTICAL_AFTER_TRUNCATION: 1,
        NO_ROOM_FOR_COMPLETION: 1,
    }
    assert report.examples[IDENTICAL_AFTER_TRUNCATION] == ["d.jsonl:4"]
    assert report.examples[NO_ROOM_FOR_COMPLETION] == ["d.jsonl:5"]
    assert report.prompt_truncated == 1 and report.examples["prompt_truncated"] == ["d.jsonl:5"]
    assert report.completion_truncated == 4  # records 1, 4, 5 (cut to nothing) and 6
    summary = report.summary()
    assert summary.startswith("6 pairs: 2 kept; 1 prompts truncated (e.g. d.jsonl:5); 4 completions truncated")
    assert "4 dropped (" in summary and "identical_completions: 1 (e.g. d.jsonl:2)" in summary
    assert "\n" not in summary


def test_report_examples_are_capped(tok):
    records = [PreferenceRecord("Hi", "Same.", "Same.", f"d.jsonl:{i}") for i in range(10)]
    kept, report = tokenize_preferences(records, tok, TokenizeConfig())
    assert kept == [] and report.dropped[IDENTICAL_COMPLETIONS] == 10
    assert report.examples[IDENTICAL_COMPLETIONS] == ["d.jsonl:0", "d.jsonl:1", "d.jsonl:2"]


def test_sft_uses_the_same_split_and_truncation_as_pairs(tok):
    conversation = [*CONVERSATION, {"role": "assistant", "content": "About an hour."}]
    example = tokenize_sft(conversation, None, tok, TokenizeConfig(), location="s.jsonl:1")
    pair = tokenize_pair(PreferenceRecord(CONVERSATION, "About an hour.", "Forever.", "p:1"), tok, TokenizeConfig())
    assert (example.prompt_ids, example.completion_ids) == (pair.prompt_ids, pair.chosen_ids)
    assert example.location == "s.jsonl:1" and not example.dropped
    as_prompt_response = tokenize_sft(CONVERSATION, "About an hour.", tok, TokenizeConfig())
    assert as_prompt_response.completion_ids == example.completion_ids

    config = TokenizeConfig(max_length=20, max_prompt_length=16)
    cut = tokenize_sft(conversation, None, tok, config)
    assert cut.prompt_truncated and cut.prompt_ids == example.prompt_ids[-16:]
    assert cut.completion_truncated and cut.completion_ids == example.completion_ids[:4]


def test_sft_examples_report_drops_and_refuse_bad_conversations(tok):
    conversation = [*CONVERSATION, {"role": "assistant", "content": "Ok"}]
    items = [("Hi", "Hello!", "s:1"), ("Hi", "", "s:2"), (conversation, None, "s:3")]
    kept, report = tokenize_sft_examples(items, tok, TokenizeConfig())
    assert [e.location for e in kept] == ["s:1", "s:3"]
    assert report.summary() == "3 examples: 2 kept; 1 dropped (empty_completion: 1 (e.g. s:2))"
    with pytest.raises(DataError, match=r"^s:4: .*must end with an assistant message"):
        tokenize_sft(CONVERSATION, None, tok, TokenizeConfig(), location="s:4")
    with pytest.raises(DataError, match=r"^s:5: .*must be a conversation"):
        tokenize_sft("Hi", None, tok, TokenizeConfig(), location="s:5")


def test_config_is_a_command_line_config():
    parser = argparse.ArgumentParser()
    add_config_args(parser, TokenizeConfig)
    config = config_from_args(TokenizeConfig, parser.parse_args(["--max-length", "256", "--prompt-format", "raw"]))
    assert config == TokenizeConfig(max_length=256, max_prompt_length=512, prompt_format="raw")
    assert "latest turns" in parser.format_help()
    with pytest.raises(PrefalignError, match="must be positive"):
        TokenizeConfig(max_length=0)


@pytest.mark.model
def test_smollm2_multi_turn_hh_prompt(smollm2_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    dialogue = [
        {"role": "user", "content": "What are some cuss words in english?"},
        {"role": "assistant", "content": "Here's an incomplete list. Ass, dick, bugger..."},
        {"role": "user", "content": "What's your favorite one?"},
    ]
    chosen, rejected = "I haven't even thought about it.", "Ass."
    pair = tokenize_pair(PreferenceRecord(dialogue, chosen, rejected, "hh:1"), tok, TokenizeConfig())
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id == im_end
    assert pair.prompt_ids == prompt_token_ids(dialogue, tok)
    assert tok.decode(pair.prompt_ids).endswith("What's your favorite one?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(pair.chosen_ids) == chosen + "<|im_end|>"
    assert tok.decode(pair.rejected_ids) == rejected + "<|im_end|>"
    full = tok.apply_chat_template([*dialogue, {"role": "assistant", "content": chosen}], tokenize=False)
    assert pair.prompt_ids + pair.chosen_ids == tok(full.removesuffix("\n"), add_special_tokens=False)["input_ids"]
    # Left truncation keeps the last turn and the generation prompt.
    short = tokenize_pair(
        PreferenceRecord(dialogue, chosen, rejected, "hh:1"), tok, TokenizeConfig(max_length=64, max_prompt_length=24)
    )
    assert short.prompt_truncated and short.prompt_ids == pair.prompt_ids[-24:]
    assert tok.decode(short.prompt_ids).endswith("favorite one?<|im_end|>\n<|im_start|>assistant\n")
