"""Turn prompts and completions into token ids, exactly as the model will see them in training and in generation.

Rules every trainer relies on:

* The prompt is rendered with the generation prompt (`<|im_start|>assistant\\n` for ChatML), the same ids
  `prompt_token_ids` gives the generator, so a model is trained on the prompts it is later asked.
* A completion is the response's tokens followed by the end-of-turn token (EOS), and nothing after it: the model learns
  to stop. For chat that is the assistant turn up to and including `<|im_end|>` (the template's trailing newline is
  not part of it); for raw text it is the text's tokens plus EOS.
* Prompt and completion are tokenized TOGETHER and then split. BPE can merge across the boundary ("Answer:" + " yes"
  tokenizes differently from "Answer: " + "yes"), so the prompt's own tokens are not always a prefix of the full
  sequence. We keep the full sequence's tokens and split at the longest common prefix with the prompt's tokens: the
  model is trained on exactly what the concatenated text tokenizes to, and the few boundary tokens that differ are
  counted as completion. For a pair, both completions are split at the shorter of their two prefixes so chosen and
  rejected share one prompt.
* Truncation keeps the END of a long prompt (the latest turns matter most) at the token level, so a cut prompt may
  start mid-turn without its leading template tokens; then completions are cut from their end so prompt + completion
  fits `max_length`. A record is dropped only when nothing trainable is left, and every truncation or drop is counted
  in a `TruncationReport`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from jinja2 import TemplateError

from ..errors import DataError, PrefalignError
from .records import Message, PreferenceRecord, Text

if TYPE_CHECKING:  # transformers is heavy to import; this module only calls methods of the tokenizer it is given
    from transformers import PreTrainedTokenizerBase

PromptFormat = Literal["auto", "chat", "raw"]

# Drop reasons, as they appear in reports.
EMPTY_COMPLETION = "empty_completion"  # the response has no tokens besides EOS
IDENTICAL_COMPLETIONS = "identical_completions"  # chosen and rejected tokenize the same
NO_ROOM_FOR_COMPLETION = "no_room_for_completion"  # the truncated prompt already fills max_length
IDENTICAL_AFTER_TRUNCATION = "identical_after_truncation"  # they differ only past max_length

_EXAMPLES_PER_COUNT = 3  # locations remembered per counter, enough to go and look


@dataclass(frozen=True)
class TokenizeConfig:
    """How prompts are rendered and how long sequences may get (options of every command that tokenizes)."""

    max_length: int = field(default=1024, metadata={"help": "most tokens of prompt + completion"})
    max_prompt_length: int = field(
        default=512, metadata={"help": "most prompt tokens; longer prompts keep their end (the latest turns)"}
    )
    prompt_format: PromptFormat = field(
        default="auto",
        metadata={
            "help": "chat: render with the tokenizer's chat template (a string prompt becomes one user turn); "
            "raw: use strings as they are; auto: chat for message lists, or when the tokenizer has a chat template"
        },
    )

    def __post_init__(self) -> None:
        if self.max_length < 1 or self.max_prompt_length < 1:
            raise PrefalignError("max_length and max_prompt_length must be positive")


@dataclass
class TokenizedPair:
    """A pair ready for training: one prompt shared by both completions, each ending with EOS unless cut.

    A dropped pair keeps its (truncated) ids so a report or a debugger can still look at it."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    prompt_truncated: bool = False
    completion_truncated: bool = False
    dropped: bool = False
    drop_reason: str | None = None
    location: str = ""


@dataclass
class SFTExample:
    """One prompt and the completion to imitate, with the same flags as `TokenizedPair`."""

    prompt_ids: list[int]
    completion_ids: list[int]
    prompt_truncated: bool = False
    completion_truncated: bool = False
    dropped: bool = False
    drop_reason: str | None = None
    location: str = ""


@dataclass
class TruncationReport:
    """What tokenization did to a data set: how many records were cut or dropped, and where to look."""

    records: int = 0
    prompt_truncated: int = 0
    completion_truncated: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    # "prompt_truncated", "completion_truncated" or a drop reason -> the first few locations it happened at.
    examples: dict[str, list[str]] = field(default_factory=dict)
    unit: str = "pairs"

    @property
    def kept(self) -> int:
        return self.records - sum(self.dropped.values())

    def add(self, item: TokenizedPair | SFTExample) -> None:
        self.records += 1
        if item.prompt_truncated:
            self.prompt_truncated += 1
            self._remember("prompt_truncated", item.location)
        if item.completion_truncated:
            self.completion_truncated += 1
            self._remember("completion_truncated", item.location)
        if item.dropped:
            assert item.drop_reason is not None
            self.dropped[item.drop_reason] += 1
            self._remember(item.drop_reason, item.location)

    def _remember(self, key: str, location: str) -> None:
        seen = self.examples.setdefault(key, [])
        if len(seen) < _EXAMPLES_PER_COUNT:
            seen.append(location)

    def summary(self) -> str:
        """One line, e.g. `1000 pairs: 990 kept; 12 prompts truncated (e.g. a.jsonl:3); 10 dropped (...)`."""

        def where(key: str) -> str:
            return f" (e.g. {', '.join(self.examples[key])})" if self.examples.get(key) else ""

        parts = [f"{self.records} {self.unit}: {self.kept} kept"]
        if self.prompt_truncated:
            parts.append(f"{self.prompt_truncated} prompts truncated{where('prompt_truncated')}")
        if self.completion_truncated:
            parts.append(f"{self.completion_truncated} completions truncated{where('completion_truncated')}")
        if self.dropped:
            reasons = ", ".join(f"{reason}: {n}{where(reason)}" for reason, n in sorted(self.dropped.items()))
            parts.append(f"{sum(self.dropped.values())} dropped ({reasons})")
        return "; ".join(parts)


# ---------------------------------------------------------------------------------------------------------------------
# Rendering: text -> ids for one prompt, or one prompt + one completion.


def _use_chat(prompt: Text, tokenizer: PreTrainedTokenizerBase, prompt_format: PromptFormat) -> bool:
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if prompt_format == "raw":
        if not isinstance(prompt, str):
            raise PrefalignError("prompt_format 'raw' takes string prompts, but this prompt is a list of messages")
        return False
    if prompt_format == "chat" or not isinstance(prompt, str):
        if not has_template:
            raise PrefalignError("this tokenizer has no chat template; use string prompts with prompt_format 'raw'")
        return True
    return has_template  # auto with a string prompt


def _as_messages(text: Text, role: str) -> list[Message]:
    if isinstance(text, str):
        return [{"role": role, "content": text}]
    if not text:
        raise PrefalignError("an empty list of messages")
    return list(text)


def _render_chat(tokenizer: PreTrainedTokenizerBase, messages: list[Message], add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as exc:
        raise PrefalignError(f"the chat template refused these messages: {exc}") from None


def _prompt_text(prompt: Text, tokenizer: PreTrainedTokenizerBase, chat: bool) -> str:
    if chat:
        return _render_chat(tokenizer, _as_messages(prompt, "user"), add_generation_prompt=True)
    assert isinstance(prompt, str), "_use_chat chose raw text, which it does only for a string prompt"
    return prompt


def _full_text(prompt: Text, completion: Text, tokenizer: PreTrainedTokenizerBase, chat: bool) -> str:
    if chat:
        messages = _as_messages(prompt, "user") + _as_messages(completion, "assistant")
        return _render_chat(tokenizer, messages, add_generation_prompt=False)
    if not isinstance(completion, str):
        raise PrefalignError("prompt_format 'raw' takes string completions, but this one is a list of messages")
    assert isinstance(prompt, str), "_use_chat chose raw text, which it does only for a string prompt"
    return prompt + completion


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], chat: bool) -> list[list[int]]:
    """One batched call (the tokenizer runs it in parallel). A chat template writes every special token itself, BOS
    included for templates that use one; raw text gets the BOS the tokenizer normally starts with, never an EOS."""
    batch = tokenizer(texts, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if not chat and bos is not None and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [bos]:
        batch = [[bos, *ids] for ids in batch]
    return batch


def _eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.eos_token_id is None:
        raise PrefalignError("this tokenizer has no EOS token, so a completion cannot be taught to end")
    return tokenizer.eos_token_id


def prompt_token_ids(
    prompt: Text, tokenizer: PreTrainedTokenizerBase, prompt_format: PromptFormat = "auto"
) -> list[int]:
    """The prompt's ids as the model sees them, ending with the generation prompt (chat) or the text itself (raw)."""
    chat = _use_chat(prompt, tokenizer, prompt_format)
    return _encode(tokenizer, [_prompt_text(prompt, tokenizer, chat)], chat)[0]


def _end_at_eos(completion_ids: list[int], eos: int) -> list[int]:
    """Cut what a chat template writes after the final end-of-turn (ChatML's "\\n"); a template that does not end
    turns with EOS gets one appended, so the model still learns to stop."""
    for i in range(len(completion_ids) - 1, -1, -1):
        if completion_ids[i] == eos:
            return completion_ids[: i + 1]
    return [*completion_ids, eos]


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _split_completions(
    prompt: Text, completions: Sequence[Text], tokenizer: PreTrainedTokenizerBase, prompt_format: PromptFormat
) -> tuple[list[int], list[list[int]]]:
    """One shared prompt and each completion's ids, split where every full sequence still agrees with the prompt."""
    chat = _use_chat(prompt, tokenizer, prompt_format)
    eos = _eos_id(tokenizer)
    texts = [_prompt_text(prompt, tokenizer, chat)] + [_full_text(prompt, c, tokenizer, chat) for c in completions]
    prompt_ids, *fulls = _encode(tokenizer, texts, chat)
    # Each full[:k] equals prompt_ids[:k] for k up to its common-prefix length, so the smallest k is shared by all.
    split = min(_common_prefix_length(prompt_ids, full) for full in fulls)
    if chat:
        return fulls[0][:split], [_end_at_eos(full[split:], eos) for full in fulls]
    return fulls[0][:split], [[*full[split:], eos] for full in fulls]  # raw text has no end of turn: add one


# ---------------------------------------------------------------------------------------------------------------------
# Truncation and dropping, one implementation for pairs (two completions) and SFT (one).


@dataclass
class _Fitted:
    prompt_ids: list[int]
    completions: list[list[int]]
    prompt_truncated: bool
    completion_truncated: bool
    drop_reason: str | None


def _drop_reason(completions: list[list[int]], fitted: list[list[int]], eos: int) -> str | None:
    if any(c in ([], [eos]) for c in completions):
        return EMPTY_COMPLETION
    if len(completions) == 2 and completions[0] == completions[1]:
        return IDENTICAL_COMPLETIONS
    if not all(fitted):
        return NO_ROOM_FOR_COMPLETION
    if len(fitted) == 2 and fitted[0] == fitted[1]:
        return IDENTICAL_AFTER_TRUNCATION  # nothing left to prefer one over the other
    return None


def _fit(prompt_ids: list[int], completions: list[list[int]], config: TokenizeConfig, eos: int) -> _Fitted:
    """Keep the prompt's end, then cut completions so that prompt + each completion fits `max_length`."""
    prompt_truncated = len(prompt_ids) > config.max_prompt_length
    if prompt_truncated:
        prompt_ids = prompt_ids[len(prompt_ids) - config.max_prompt_length :]
    budget = max(config.max_length - len(prompt_ids), 0)
    completion_truncated = any(len(c) > budget for c in completions)
    fitted = [c[:budget] for c in completions]
    reason = _drop_reason(completions, fitted, eos)
    return _Fitted(prompt_ids, fitted, prompt_truncated, completion_truncated, reason)


@contextmanager
def _at(location: str) -> Iterator[None]:
    """Turn a rendering problem into an error that names the record."""
    try:
        yield
    except DataError:
        raise
    except PrefalignError as exc:
        raise DataError(location or "record", str(exc)) from None


def tokenize_pair(
    record: PreferenceRecord, tokenizer: PreTrainedTokenizerBase, config: TokenizeConfig
) -> TokenizedPair:
    """Tokenize, truncate and (if nothing sensible is left) mark as dropped one preference pair."""
    with _at(record.location):
        completions = [record.chosen, record.rejected]
        prompt_ids, ids = _split_completions(record.prompt, completions, tokenizer, config.prompt_format)
    fit = _fit(prompt_ids, ids, config, tokenizer.eos_token_id)
    return TokenizedPair(
        prompt_ids=fit.prompt_ids,
        chosen_ids=fit.completions[0],
        rejected_ids=fit.completions[1],
        prompt_truncated=fit.prompt_truncated,
        completion_truncated=fit.completion_truncated,
        dropped=fit.drop_reason is not None,
        drop_reason=fit.drop_reason,
        location=record.location,
    )


def tokenize_preferences(
    records: Iterable[PreferenceRecord], tokenizer: PreTrainedTokenizerBase, config: TokenizeConfig
) -> tuple[list[TokenizedPair], TruncationReport]:
    """The pairs worth training on, and a report counting every truncated or dropped one."""
    report = TruncationReport(unit="pairs")
    kept = []
    for record in records:
        pair = tokenize_pair(record, tokenizer, config)
        report.add(pair)
        if not pair.dropped:
            kept.append(pair)
    return kept, report


def split_last_assistant_turn(messages: list[Message]) -> tuple[list[Message], list[Message]]:
    """A conversation as (prompt, completion) for SFT: the completion is its final assistant message."""
    if not messages or messages[-1].get("role") != "assistant":
        raise PrefalignError("a conversation for SFT must end with an assistant message")
    if len(messages) == 1:
        raise PrefalignError("a conversation for SFT needs at least one message before the assistant's answer")
    return messages[:-1], messages[-1:]


def tokenize_sft(
    prompt: Text,
    completion: Text | None,
    tokenizer: PreTrainedTokenizerBase,
    config: TokenizeConfig,
    location: str = "",
) -> SFTExample:
    """Tokenize one SFT example: a prompt and its response, or (completion=None) a conversation whose last
    assistant turn is the response. Same boundary, truncation and drop rules as `tokenize_pair`."""
    with _at(location):
        if completion is None:
            if isinstance(prompt, str):
                raise PrefalignError("an SFT example without a completion must be a conversation")
            prompt, completion = split_last_assistant_turn(prompt)
        prompt_ids, ids = _split_completions(prompt, [completion], tokenizer, config.prompt_format)
    fit = _fit(prompt_ids, ids, config, tokenizer.eos_token_id)
    return SFTExample(
        prompt_ids=fit.prompt_ids,
        completion_ids=fit.completions[0],
        prompt_truncated=fit.prompt_truncated,
        completion_truncated=fit.completion_truncated,
        dropped=fit.drop_reason is not None,
        drop_reason=fit.drop_reason,
        location=location,
    )


def tokenize_sft_examples(
    examples: Iterable[tuple[Text, Text | None, str]], tokenizer: PreTrainedTokenizerBase, config: TokenizeConfig
) -> tuple[list[SFTExample], TruncationReport]:
    """Tokenize (prompt, completion or None, location) triples; returns the kept examples and the report."""
    report = TruncationReport(unit="examples")
    kept = []
    for prompt, completion, location in examples:
        example = tokenize_sft(prompt, completion, tokenizer, config, location)
        report.add(example)
        if not example.dropped:
            kept.append(example)
    return kept, report
