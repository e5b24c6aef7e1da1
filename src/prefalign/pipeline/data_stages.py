"""The demo's data: prompt sets, SFT data (rejection-sampled or the user's), and preference pairs (built or the
user's) split into train and held-out pairs."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..console import say
from ..data.split import split_heldout
from ..errors import DataError, PrefalignError
from ..fileio import jsonl_lines, read_jsonl, write_json_atomic, write_jsonl_atomic, write_text_atomic
from ..generate import GenerationConfig
from ..pairs.build import SYNTHESIZED, PairsConfig
from .config import DemoConfig

HELDOUT_PAIRS = "heldout-pairs"  # eval_prompts value: evaluate on the prompts of the held-out pairs


def prompt_rows(source: str) -> list[dict[str, Any]]:
    """A prompts file's records, or the built-in set for `builtin[:split]`."""
    from ..evaluate.prompt_set import load_eval_prompts

    return [{"id": p.id, "prompt": p.prompt, **p.meta} for p in load_eval_prompts(source)]


def copy_records(source: str, dest: Path, limit: int | None) -> int:
    """The first `limit` records (all when None) of any file `prefalign data` reads, as JSON Lines; how many."""
    from ..data.sources import open_source

    _, rows = open_source(source)
    written = []
    for row in rows:
        if limit is not None and len(written) == limit:
            break
        if row.problem is not None:
            raise DataError(row.location, row.problem.reason.text)
        written.append(row.value)
    return write_jsonl_atomic(dest, written)


def sample_sft_data(
    model: str,
    train_prompts: Path,
    prompts: int,
    samples: int,
    sampling: GenerationConfig,
    work: Path,
    rewrite: bool = False,
    max_repetition: float = 1.0,
) -> None:
    """work/sft.jsonl: for each of the first `prompts` train prompts, the first of `samples` samples of `model` that
    passes every verifier check (with `rewrite`, else a sample a rewrite makes pass), repeating no more than
    `max_repetition`; work/sampling.json: what happened to every sample."""
    from ..judges.registry import load_judge
    from ..models.loading import load_model, load_tokenizer
    from .sft_data import rejection_sample

    rows = [row for _, row in read_jsonl(train_prompts)]
    kept, report = rejection_sample(
        load_model(model),
        load_tokenizer(model),
        rows[:prompts],
        load_judge("verifier"),
        samples=samples,
        generation=sampling,
        rewrite=rewrite,
        max_repetition=max_repetition,
    )
    if not kept:
        raise PrefalignError(
            f"[sft_data] none of {report.samples} samples passed every check; nothing to train on "
            "(raise --sft-samples or --sft-prompts, or pass --sft-data)"
        )
    write_jsonl_atomic(work / "sft.jsonl", kept)
    write_json_atomic(work / "sampling.json", report.to_json())
    rewritten = f", {report.rewritten} kept as rewrites ({report.trimmed} trimmed)" if rewrite else ""
    repetitive = f", {report.repetitive} passed but repeat too much" if report.repetitive else ""
    say(
        f"[sft_data] kept {report.kept} of {report.prompts} prompts ({report.passed} of {report.samples} "
        f"samples passed every check, {report.truncated} cut at the token limit{repetitive}{rewritten})",
        prefix="",
    )


def build_or_load_pairs(
    config: DemoConfig, sampling: PairsConfig, work: Path, sft_model: str, train_prompts: Path
) -> None:
    """All pairs into work/pairs.jsonl (the user's, or sampled from `sft_model` with `sampling` and judged), then a
    seeded split into train.jsonl and heldout.jsonl; work/summary.json says what was done."""
    built = work / "pairs.jsonl"
    if config.preference_data is not None:
        summary = _load_pairs(config.preference_data, config.data_limit, built)
    else:
        summary = _build_pairs(config.judge, sampling, sft_model, train_prompts, built, "sft", "pairs")
    summary.update(split_pairs(built, work, config.heldout_fraction, config.seed))
    write_json_atomic(work / "summary.json", summary, default=str)
    say(
        f"[pairs] {summary['pairs']} pairs: {summary['train_pairs']} to train on"
        + (
            f" ({summary['reward_train_pairs']} without the contrast pairs, for the reward model)"
            if summary["reward_train_pairs"] != summary["train_pairs"]
            else ""
        )
        + f", {summary['heldout_pairs']} held out"
        + (
            f" ({summary['heldout_rewrites']} rewrite and contrast pairs of held-out prompts set aside)"
            if summary["heldout_rewrites"]
            else ""
        ),
        prefix="",
    )


def build_round_pairs(
    config: DemoConfig, sampling: PairsConfig, work: Path, model: str, prompts: Path, first_round: Path, round_: int
) -> None:
    """Pairs for DPO round `round_` (2 and up) into work/pairs.jsonl: sampled from the previous round's DPO model
    (`model`) on `prompts` and judged, then split as the first round's pairs stage (`first_round`) split its prompts
    (`split_round_pairs`); work/summary.json says what was done."""
    built = work / "pairs.jsonl"
    tag = f"pairs_{round_}"
    summary = _build_pairs(config.judge, sampling, model, prompts, built, f"dpo round {round_ - 1}", tag)
    summary.update(split_round_pairs(built, work, first_round))
    write_json_atomic(work / "summary.json", summary, default=str)
    set_aside = summary["heldout_pairs"] + summary["heldout_rewrites"]
    say(
        f"[{tag}] {summary['pairs']} pairs from the round {round_ - 1} DPO model: {summary['train_pairs']} to train on"
        + (f", {set_aside} of the first round's held-out prompts set aside" if set_aside else ""),
        prefix="",
    )


def _load_pairs(source: str, limit: int | None, built: Path) -> dict[str, Any]:
    from ..data.loading import load_preferences, save_preferences

    data = load_preferences(source)
    save_preferences(data.records[:limit], built)
    return {
        "source": source,
        "read": data.report.read,
        "kept": data.report.kept,
        "rejected": data.report.rejected,
        "used": min(len(data.records), limit or len(data.records)),
    }


def _build_pairs(
    judge_spec: str, sampling: PairsConfig, model: str, prompts: Path, built: Path, model_name: str, tag: str
) -> dict[str, Any]:
    """Pairs sampled from `model` (named `model_name` in their provenance) on `prompts` and judged; progress lines
    start with [`tag`]."""
    from ..judges.registry import load_judge
    from ..models.loading import load_model, load_tokenizer
    from ..pairs.build import build_pairs, read_prompt_records

    judge = load_judge(judge_spec)
    try:
        report = build_pairs(
            load_model(model),
            load_tokenizer(model),
            judge,
            read_prompt_records(prompts, sampling.limit),
            built,
            sampling,
            model_name=model_name,
            on_batch=lambda r: say(f"[{tag}] {r.progress()}", prefix=""),
        )
    finally:
        judge.close()
    return {"source": "built", "config": asdict(sampling), **asdict(report)}


def split_pairs(built: Path, work: Path, fraction: float, seed: int) -> dict[str, int]:
    """Split the pairs file `built` into work/train.jsonl and work/heldout.jsonl by prompt (a seeded draw of the
    prompts, at least 2, holds out every pair of theirs, so no held-out prompt is trained on); return the counts.

    A held-out prompt's rewrite, contrast and mirror pairs (source "rewrite:...", "contrast:..." or "mirror:...") go to
    work/heldout_rewrites.jsonl instead: a case or quoting edit is an easy pair, and held-out accuracy should measure
    the judged pairs. work/reward_train.jsonl is train.jsonl without its contrast pairs, for the reward model: it
    learns the judge's preferences, and the judge scores a contrast pair's two sides alike (the edit breaks no rule
    of that prompt's); DPO learns from them that an edit nobody asked for makes an answer worse. Mirror pairs stay in
    both: under the instruction their prompt adds, the judge prefers the edited side."""
    lines, rows, keys = _read_pair_lines(built)
    if len(lines) < 4:
        raise PrefalignError(
            f"[pairs] only {len(lines)} pairs: too few to train and hold some out "
            "(more --pair-prompts or --pair-samples)"
        )
    _, held_keys = split_heldout(sorted(set(keys), key=keys.index), fraction, seed=seed, minimum=2, what="prompts")
    return _write_split(lines, rows, keys, set(held_keys), work)


def split_round_pairs(built: Path, work: Path, first_round: Path) -> dict[str, int]:
    """`split_pairs` for a later DPO round: the prompts held out are those the first round's pairs stage
    (`first_round`) held out, so that no round trains on a prompt whose pairs validate every round."""
    held = set()
    for name in ("heldout", "heldout_rewrites"):
        held |= set(_read_pair_lines(first_round / f"{name}.jsonl")[2])
    lines, rows, keys = _read_pair_lines(built)
    counts = _write_split(lines, rows, keys, held, work)
    if not counts["train_pairs"]:
        raise PrefalignError(f"[{work.name}] no pairs to train on in {built} (more --pair-prompts or --pair-samples)")
    return counts


def _read_pair_lines(path: Path) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """A pairs file's lines, records, and prompt keys (the id, else the prompt)."""
    # Lines end at "\n" only (`jsonl_lines`): a pair whose text holds U+2028 stays one pair.
    lines = [raw.decode("utf-8").rstrip("\r\n") for _, raw in jsonl_lines(path)] if path.exists() else []
    rows = [json.loads(line) for line in lines]
    return lines, rows, [json.dumps(row.get("id", row["prompt"]), sort_keys=True) for row in rows]


def _write_split(
    lines: list[str], rows: list[dict[str, Any]], keys: list[str], held: set[str], work: Path
) -> dict[str, int]:
    split: dict[str, list[str]] = {"train": [], "reward_train": [], "heldout": [], "heldout_rewrites": []}
    for line, row, key in zip(lines, rows, keys):
        source = str(row.get("source", ""))
        if key not in held:
            split["train"].append(line)
            if not source.startswith("contrast:"):
                split["reward_train"].append(line)
        else:
            synthesized = source.split(":")[0] in SYNTHESIZED
            split["heldout_rewrites" if synthesized else "heldout"].append(line)
    for name, kept in split.items():
        write_text_atomic(work / f"{name}.jsonl", "".join(line + "\n" for line in kept))
    return {
        "pairs": len(lines),
        "train_pairs": len(split["train"]),
        "reward_train_pairs": len(split["reward_train"]),
        "heldout_pairs": len(split["heldout"]),
        "heldout_rewrites": len(split["heldout_rewrites"]),
    }
