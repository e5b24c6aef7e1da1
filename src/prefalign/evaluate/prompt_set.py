"""The evaluation prompts: a prompts file, or the built-in prompt set by name.

A prompts file is what `prefalign generate --prompts` reads (.jsonl/.json records with a `prompt`, or .txt lines).
Records may carry an `id` (shown in the report), the verifier's `instruction_id_list` and `kwargs` (IFEval's field
names) and `unseen_phrasing` (true: the accuracy on such prompts is reported as its own row), as `prefalign prompts
builtin` writes them. `builtin`, `builtin:heldout`, `builtin:train` and `builtin:all`
name the built-in set itself (seed 0), so an evaluation needs no file: `builtin` is the held-out split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.records import Text
from ..errors import PrefalignError

BUILTIN = "builtin"
# A prompt record's fields that judges and the report read: the verifier's instructions, and how they are worded
# (`phrasings`; `unseen_phrasing`: worded only in phrasings no train prompt uses, reported as its own row).
META_FIELDS = ("instruction_id_list", "kwargs", "phrasings", "unseen_phrasing")


@dataclass(frozen=True)
class EvalPrompt:
    """One prompt: its id, its text (a string or chat messages), and what judges read besides (`meta`)."""

    id: str
    prompt: Text
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def instruction_ids(self) -> list[str]:
        return list(self.meta.get("instruction_id_list") or [])

    @property
    def unseen_phrasing(self) -> bool:
        """True when the prompt's instructions are worded only in phrasings no train prompt uses."""
        return self.meta.get("unseen_phrasing") is True


def load_eval_prompts(source: str, limit: int | None = None) -> list[EvalPrompt]:
    """The first `limit` prompts (all when None) of a prompts file or of `builtin[:SPLIT]`."""
    if limit is not None and limit < 1:
        raise PrefalignError(f"--limit must be at least 1, got {limit}")
    if source == BUILTIN or source.startswith(BUILTIN + ":"):
        from ..prompts import builtin_prompts

        split = source.partition(":")[2] or "heldout"
        records = builtin_prompts(split=split)  # type: ignore[arg-type]  # builtin_prompts checks the split name
    else:
        from ..data.prompt_files import read_prompts

        records = read_prompts(Path(source))
    records = records[:limit] if limit is not None else records
    prompts = []
    for index, record in enumerate(records):
        meta = {key: record[key] for key in META_FIELDS if key in record}
        prompts.append(EvalPrompt(str(record.get("id", f"#{index + 1}")), record["prompt"], meta))
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise PrefalignError(f"{source}: prompt id {duplicate!r} appears more than once; ids must be unique")
    return prompts
