"""Preference pairs from your own model: sample several responses per prompt, let a judge pick, keep what it preferred.

For each prompt the model answers `num_samples` times, sample j with temperature `temperatures[j % len(temperatures)]`
and seed `seed + j`: every sample has its own random stream (so two samples never share their draws, even at the
same temperature), and the temperatures cycle when there are more samples than temperatures. With two distinct
answers the judge compares them (`Judge.compare`: LLM judges ask in both orders); with more it scores each
(`Judge.score`) and the best and the worst make the pair (the first sample of equal scores on either side). With
`min_score_gap`, a pair whose scores differ by less is skipped as "small_gap", so that every pair carries signal; with
`max_chosen_repetition`, a pair whose chosen answer repeats more of its word 4-grams than that
(`prefalign.text_metrics.repetition`) is skipped as "repetitive": a loop the judge happens to prefer (the same bullet
written four times satisfies a bullet count) is not something to teach.
With `rewrite`, a prompt can give a second line: a rewrite pair (`prefalign.pairs.rewrite`), a sample edited to follow
the instructions it failed, chosen over the sample as it was, with `source` "rewrite:..." (judged pairs: "judge"); a
sample cut at the token limit is trimmed back to a complete sentence first ("rewrite:trim+..."), and used only when no
finished sample can be edited. With `contrast` too, each rewrite pair that changed the whole answer (letter case,
quotes, commas) gets a contrast pair: another prompt's sample as it was, chosen over the same sample with that edit,
which its prompt did not ask for ("contrast:...", `prefalign.pairs.lines.contrast_lines`). With `mirror` too, each
contrast pair gets its mirror: the same two answers under the same prompt with the edit's instruction added, the edited
answer chosen ("mirror:...", `prefalign.pairs.lines.mirror_lines`). A batch's rewrite, contrast and mirror pairs are
written before its judged pairs.

Two files come out:

* OUT (e.g. `pairs.jsonl`): one pair per line, prompt order, each `prompt`, `chosen`, `rejected` plus provenance (prompt
  id and fields, model, judge, scores, each side's sampling settings, the judge's details). It loads with
  `load_preferences(OUT, strict=True)`.
* OUT + ".skipped.jsonl": the prompts that gave no pair, never a guessed one, with a `status`: "tie" (the judge saw no
  difference, or flipped its verdict with the order), "judge_failure" (an error, say an unparseable LLM answer),
  "no_distinct_responses" (fewer than two different non-empty answers), "small_gap" (the judge's scores differ by
  less than `min_score_gap`) or "repetitive" (the preferred answer loops), plus the answers and scores.

Resuming: both files are appended batch by batch (flushed and fsynced), and a rerun skips every prompt found in either,
so a kill loses at most the chunk in flight. Prompts are cut into chunks of `chunk_size` in input order before
anything is skipped, and a batch that was half written when the run died is generated again whole: the resumed run
decodes exactly the batches an uninterrupted one would, and with per-prompt seeded sampling (see
`prefalign.generate`) writes the same lines.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..console import say
from ..data.prompt_files import prompt_rows
from ..data.records import Text
from ..errors import DataError, PrefalignError
from ..fileio import jsonl_lines
from ..generate import GenerationConfig, GenerationDtype, PromptFormat
from ..judges.base import Judge

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


SKIPPED_SUFFIX = ".skipped.jsonl"
SKIP_STATUSES = ("tie", "judge_failure", "no_distinct_responses", "small_gap", "repetitive")
# The pairs written besides a prompt's judged line, by the first word of their "source".
SYNTHESIZED = ("rewrite", "contrast", "mirror")
# Fields a pairs line is made of; a prompt record's own fields (instruction ids, topic...) are copied beside them and
# may not reuse these names.
PAIR_FIELDS = (
    "prompt",
    "chosen",
    "rejected",
    "id",
    "model",
    "judge",
    "chosen_score",
    "rejected_score",
    "chosen_sample",
    "rejected_sample",
    "judge_details",
    "generation",
    "status",
    "error",
    "samples",
    "source",
)


@dataclass
class PairsConfig:
    """How responses are sampled for `prefalign pairs build`."""

    num_samples: int = field(default=2, metadata={"help": "responses per prompt; with more than 2, best vs worst"})
    temperatures: list[float] = field(
        default_factory=lambda: [0.7, 1.2],
        metadata={"help": "sampling temperatures, cycled over the samples (default: 0.7 1.2)"},
    )
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling mass, for every sample"})
    max_new_tokens: int = field(default=256, metadata={"help": "most new tokens per response"})
    batch_size: int = field(default=16, metadata={"help": "prompts decoded together (row slots of the batch)"})
    chunk_size: int = field(
        default=256,
        metadata={
            "help": "prompts sampled, judged and written together: a kill loses at most one chunk; several batches' "
            "worth keeps the decoding batch full (a finished row takes the next prompt of the chunk)"
        },
    )
    dtype: GenerationDtype = field(
        default="model",
        metadata={"help": "precision of sampling: model, float32, bfloat16, or auto (see prefalign generate --help)"},
    )
    seed: int = field(default=0, metadata={"help": "sampling seed; sample j uses seed + j"})
    limit: int | None = field(default=None, metadata={"help": "use only the first N prompts"})
    prompt_format: PromptFormat = field(default="auto", metadata={"help": "chat, raw, or auto (chat when possible)"})
    min_score_gap: float = field(
        default=0.0,
        metadata={
            "help": "skip (status small_gap) a pair whose chosen and rejected judge scores differ by less than this; "
            "needs a judge that scores each answer (e.g. the verifier). 0: keep every pair the judge prefers"
        },
    )
    max_chosen_repetition: float = field(
        default=1.0,
        metadata={
            "help": "skip (status repetitive) a pair whose chosen response repeats more than this share of its word "
            "4-grams (the evaluation's repetition measure), rewrite pairs too. 1: no limit"
        },
    )
    rewrite: bool = field(
        default=False,
        metadata={
            "help": "also write, per prompt, a rewrite pair: a sample edited to follow the instructions it fails that "
            "an edit can satisfy (letter case, double quotes, no commas, end phrase, postscript, title), chosen over "
            "the sample as it was (a sample cut at the token limit, only when no finished one can be edited: trimmed "
            "back to a complete sentence first); the verifier must confirm it (see prefalign.pairs.rewrite)"
        },
    )

    contrast: bool = field(
        default=False,
        metadata={
            "help": "with --rewrite: also write, per rewrite pair that changed the whole answer (letter case, double "
            "quotes, commas), a contrast pair: a sample of a prompt that does not ask for that edit, chosen as it "
            "was over the same sample edited (see prefalign.pairs.lines.contrast_lines)"
        },
    )

    mirror: bool = field(
        default=False,
        metadata={
            "help": "with --contrast: also write, per contrast pair, its mirror: the same two answers under the same "
            "prompt with the edit's instruction added, the edited answer chosen (prefalign.pairs.lines.mirror_lines)"
        },
    )

    def __post_init__(self) -> None:
        if self.contrast and not self.rewrite:
            raise PrefalignError("--contrast needs --rewrite: a contrast pair answers a rewrite pair's edit")
        if self.mirror and not self.contrast:
            raise PrefalignError("--mirror needs --contrast: a mirror pair turns a contrast pair around")
        if self.num_samples < 2:
            raise PrefalignError(f"--num-samples must be at least 2 (a pair needs two answers), got {self.num_samples}")
        if not self.temperatures:
            raise PrefalignError("--temperatures needs at least one temperature")
        for temperature in self.temperatures:
            if not (math.isfinite(temperature) and temperature > 0):
                raise PrefalignError(f"temperatures must be positive (greedy gives a single answer), got {temperature}")
        if self.chunk_size < 1:
            raise PrefalignError(f"--chunk-size must be at least 1, got {self.chunk_size}")
        if self.limit is not None and self.limit < 1:
            raise PrefalignError(f"--limit must be at least 1, got {self.limit}")
        if not (math.isfinite(self.min_score_gap) and self.min_score_gap >= 0):
            raise PrefalignError(f"--min-score-gap must be a number of at least 0, got {self.min_score_gap}")
        if not 0 < self.max_chosen_repetition <= 1:
            raise PrefalignError(f"--max-chosen-repetition must be in (0, 1], got {self.max_chosen_repetition}")
        # The remaining checks are GenerationConfig's own.
        self.sample_settings()

    def sample_settings(self) -> list[GenerationConfig]:
        """The generation settings of sample 0, 1, ..., num_samples - 1."""
        return [
            GenerationConfig(
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperatures[j % len(self.temperatures)],
                top_p=self.top_p,
                seed=self.seed + j,
                batch_size=self.batch_size,
                prompt_format=self.prompt_format,
                dtype=self.dtype,
            )
            for j in range(self.num_samples)
        ]


@dataclass(frozen=True)
class PromptRecord:
    """A prompt to build a pair for: its id, its text (string or messages) and its other fields (e.g. the verifier's
    `instruction_id_list` and `kwargs`), which go to the judge as `JudgeItem.meta` and into the output lines."""

    id: str
    prompt: Text
    fields: dict[str, Any]


def read_prompt_records(path: str | os.PathLike[str], limit: int | None = None) -> list[PromptRecord]:
    """The first `limit` (default: all) prompts of a prompts file (`prefalign.data.prompt_files`), each with a unique
    `id` (default "line-N"); the fields pairs build writes are refused in the input.

    Raises DataError naming file:line for a bad record, PrefalignError for a missing or empty file.
    """
    reserved = [name for name in PAIR_FIELDS if name not in ("prompt", "id")]
    records: list[PromptRecord] = []
    seen: dict[str, str] = {}
    for location, default_id, row in prompt_rows(Path(path), reserved, writer="pairs build"):
        identifier = row.get("id", default_id)
        if not isinstance(identifier, (str, int)) or isinstance(identifier, bool):
            raise DataError(location, "`id` must be a string or a number")
        if str(identifier) in seen:
            raise DataError(location, f"id {str(identifier)!r} repeats the id at {seen[str(identifier)]}")
        seen[str(identifier)] = location
        fields = {key: value for key, value in row.items() if key not in ("prompt", "id")}
        records.append(PromptRecord(str(identifier), row["prompt"], fields))
        if len(records) == limit:  # read no further: a bad line past the limit does not matter
            break
    if not records:
        raise PrefalignError(f"{path}: no prompts in this file")
    return records


def check_output_path(output: str | os.PathLike[str]) -> Path:
    """`output` as a Path, if it can be a pairs file: a .jsonl name in an existing directory."""
    output = Path(output)
    if not output.name.endswith(".jsonl"):
        raise PrefalignError(f"{output}: the pairs file must be .jsonl (the data loader reads it by its name)")
    if not output.parent.is_dir():
        raise PrefalignError(f"{output}: no such directory {output.parent}")
    return output


def skipped_path(output: str | os.PathLike[str]) -> Path:
    """Where the prompts that gave no pair are recorded: OUT + ".skipped.jsonl"."""
    return Path(f"{output}{SKIPPED_SUFFIX}")


@dataclass
class BuildReport:
    """What the output files hold once a run ends (lines from earlier runs included)."""

    prompts: int  # prompts in the input (after --limit)
    resumed: int = 0  # of them, done by an earlier run
    pairs: int = 0
    ties: int = 0
    judge_failures: int = 0
    no_distinct_responses: int = 0
    small_gaps: int = 0  # the judge preferred one answer, by less than --min-score-gap
    repetitive: int = 0  # the judge preferred an answer that repeats more than --max-chosen-repetition
    rewrites: int = 0  # rewrite pairs, written besides the prompt's judged line
    contrasts: int = 0  # contrast pairs, written besides the prompt's judged and rewrite lines
    mirrors: int = 0  # mirror pairs, one per contrast pair whose prompt can take the edit's instruction

    @property
    def done(self) -> int:
        """Prompts judged: each has one judged line (a pair or a skip); rewrite, contrast and mirror pairs come on
        top."""
        return (
            self.pairs
            + self.ties
            + self.judge_failures
            + self.no_distinct_responses
            + self.small_gaps
            + self.repetitive
        )

    @property
    def tie_rate(self) -> float:
        """Ties per prompt done."""
        return self.ties / self.done if self.done else 0.0

    def count(self, status: str) -> None:
        names = {"pair": "pairs", "tie": "ties", "judge_failure": "judge_failures", "small_gap": "small_gaps"}
        names.update(rewrite="rewrites", contrast="contrasts", mirror="mirrors")
        name = names.get(status, status)
        setattr(self, name, getattr(self, name) + 1)

    def progress(self) -> str:
        """One line while the run goes on: how far it is, and what it has written so far."""
        return (
            f"{self.done}/{self.prompts} prompts done: {self.pairs} pairs, {self.ties} ties, "
            f"{self.judge_failures} judge failures"
            + (f", {self.rewrites} rewrite pairs" if self.rewrites else "")
            + (f", {self.contrasts} contrast pairs" if self.contrasts else "")
            + (f", {self.mirrors} mirror pairs" if self.mirrors else "")
        )

    def summary(self) -> str:
        return (
            f"prompts {self.prompts} ({self.resumed} done before this run), pairs written {self.pairs}, "
            f"ties {self.ties}, judge failures {self.judge_failures}, "
            f"no distinct responses {self.no_distinct_responses}, tie rate {self.tie_rate:.1%}"
            + (f", score gaps below the minimum {self.small_gaps}" if self.small_gaps else "")
            + (f", repetitive chosen answers {self.repetitive}" if self.repetitive else "")
            + (f", rewrite pairs {self.rewrites}" if self.rewrites else "")
            + (f", contrast pairs {self.contrasts}" if self.contrasts else "")
            + (f", mirror pairs {self.mirrors}" if self.mirrors else "")
        )


def build_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    judge: Judge,
    prompts: list[PromptRecord],
    output: str | os.PathLike[str],
    config: PairsConfig,
    *,
    model_name: str,
    on_batch: Callable[[BuildReport], None] | None = None,
) -> BuildReport:
    """Generate, judge and append pairs for every prompt not already in `output` or its skipped file.

    `model_name` is recorded as provenance and must match the one of an existing output. `on_batch` is called with
    the running counts after each batch is on disk.
    """
    from ..generate import generate
    from .lines import contrast_lines, judged_lines, mirror_lines, rewrite_lines, rewriter

    output = check_output_path(output)
    provenance = {"model": model_name, "judge": judge.name, "generation": _generation_settings(config)}
    report = BuildReport(prompts=len(prompts))
    wanted = {p.id for p in prompts}
    done: set[tuple[str, str]] = set()  # (prompt id, "judged", "rewrite", "contrast" or "mirror") of lines on disk
    for path in (output, skipped_path(output)):
        for line in _read_existing(path, provenance):
            done.add(_line_key(line))
            if str(line["id"]) in wanted:  # an earlier run may have had a larger --limit
                report.count(_line_kind(line))
    report.resumed = report.done
    settings = config.sample_settings()
    verifier = rewriter() if config.rewrite else None
    with (
        open(output, "a", encoding="utf-8") as pairs_out,
        open(skipped_path(output), "a", encoding="utf-8") as skip_out,
    ):
        for start in range(0, len(prompts), config.chunk_size):
            batch = prompts[start : start + config.chunk_size]
            if all((p.id, "judged") in done for p in batch):
                continue
            # The whole batch is generated even when part of it was written before a kill: same batches, same outputs.
            texts = [p.prompt for p in batch]
            samples = [generate(model, tokenizer, texts, setting, progress=False) for setting in settings]
            lines = judged_lines(
                judge, batch, samples, settings, provenance, config.min_score_gap, config.max_chosen_repetition
            )
            if verifier is not None:
                # A batch's rewrite, contrast and mirror pairs go before its judged lines (the pairs file is written
                # before the skipped one): whenever every judged line of a batch is on disk, so are they.
                rewrites = rewrite_lines(verifier, batch, samples, settings, provenance, config.max_chosen_repetition)
                contrasts = (
                    contrast_lines(
                        verifier,
                        batch,
                        samples,
                        settings,
                        provenance,
                        rewrites,
                        config.seed,
                        config.max_chosen_repetition,
                    )
                    if config.contrast
                    else []
                )
                mirrors = mirror_lines(verifier, contrasts, config.seed) if config.mirror else []
                lines = rewrites + contrasts + mirrors + lines
            new = [line for line in lines if _line_key(line) not in done]
            _append(pairs_out, [line for line in new if "status" not in line])
            _append(skip_out, [line for line in new if "status" in line])
            for line in new:
                done.add(_line_key(line))
                report.count(_line_kind(line))
            if on_batch is not None:
                on_batch(report)
    return report


def _line_kind(line: dict[str, Any]) -> str:
    """ "pair", a skip status, or one of SYNTHESIZED (pairs written besides the prompt's judged line)."""
    synthesized = str(line.get("source", "")).split(":")[0]
    return synthesized if synthesized in SYNTHESIZED else line.get("status", "pair")


def _line_key(line: dict[str, Any]) -> tuple[str, str]:
    kind = _line_kind(line)
    return str(line["id"]), kind if kind in SYNTHESIZED else "judged"


def _generation_settings(config: PairsConfig) -> dict[str, Any]:
    settings = dataclasses.asdict(config)
    # None changes how a prompt is sampled, so a resumed run may change them. (Only the same batch and chunk sizes
    # guarantee byte-identical lines: another batch shape can move the logits' last bits, see prefalign.generate.)
    del settings["limit"], settings["batch_size"], settings["chunk_size"]
    if not settings["mirror"]:  # written only when on: files from before the option resume and compare as they were
        del settings["mirror"]
    return settings


def _read_existing(path: Path, provenance: dict[str, Any]) -> list[dict[str, Any]]:
    """The complete lines of an earlier run's file; a last line cut off by a kill is removed from the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(len(complete))
        say(f"{path}: removed an incomplete last line left by an interrupted run")
    lines = []
    for number, raw in jsonl_lines(path):
        location = f"{path}:{number}"
        try:
            line = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(location, f"not UTF-8 text at byte offset {exc.start}") from None
        except json.JSONDecodeError as exc:
            raise DataError(location, f"not valid JSON ({exc.msg}); is this a file written by pairs build?") from None
        if not isinstance(line, dict) or "id" not in line:
            raise DataError(location, "no `id`; is this a file written by pairs build?")
        for key, value in provenance.items():
            if line.get(key) != value:
                raise PrefalignError(
                    f"{location}: written with {key} {line.get(key)!r}, this run uses {value!r}; "
                    "resume with the same settings, or write to another -o"
                )
        lines.append(line)
    return lines


def _append(handle: Any, lines: list[dict[str, Any]]) -> None:
    if not lines:
        return
    handle.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    handle.flush()
    os.fsync(handle.fileno())
