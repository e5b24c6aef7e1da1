"""What evaluation caches: generations per model (so no answer is generated twice), and per-model results.

Generations go through the one generation path. A cache file holds one model's answers under one set of decoding
settings: `generations/<key>.jsonl`, the key a digest of (model identity, settings). Each line is one prompt's
generation, found again by a digest of the prompt's text. Adding a model to an evaluation generates for that model
only; adding prompts generates for the new prompts only; changing a model's weights or the decoding settings changes
the key. Greedy decoding ignores the seed and top_p, so they are left out of a greedy key: rerunning with another
--seed does not regenerate greedy answers.

Lines are appended as each `generate` call returns; a run killed mid-write leaves a torn last line, which is skipped.

Results that need a model's forward passes (its KL from the base, its log-probs of held-out pairs) are cached as JSON
files keyed the same way, so an evaluation that adds a model loads none of the models it already evaluated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from ..data.records import Text
from ..errors import DataError
from ..fileio import jsonl_lines, parse_json_line, write_text_atomic
from ..generate import Generation, GenerationConfig, PromptPrefills
from .models import EvalModel


def prompt_key(prompt: Text) -> str:
    return hashlib.sha256(json.dumps(prompt, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def decoding_settings(config: GenerationConfig) -> dict[str, Any]:
    """The settings that change what is generated (batch size does not; seed and top_p do only when sampling)."""
    settings = {key: value for key, value in dataclasses.asdict(config).items() if key != "batch_size"}
    if config.temperature == 0:
        del settings["seed"], settings["top_p"]
    return settings


class GenerationCache:
    """Cached generations under `directory/generations/`; counts what it generated and what it found, per label."""

    def __init__(self, directory: Path):
        self.directory = Path(directory) / "generations"
        self.generated: dict[str, int] = {}
        self.cached: dict[str, int] = {}

    def file(self, model: EvalModel, config: GenerationConfig) -> Path:
        settings = decoding_settings(config)
        key = json.dumps({"model": model.identity, **settings}, sort_keys=True)
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.jsonl"

    def generate(
        self,
        model: EvalModel,
        prompts: list[Text],
        config: GenerationConfig,
        *,
        progress: bool = True,
        prefills: PromptPrefills | None = None,
    ) -> list[Generation]:
        """Each prompt's generation by `model` under `config`, from the cache or generated (and then cached);
        `prefills` keeps the prefills of the generated ones (see `generate`)."""
        from ..generate import generate

        path = self.file(model, config)
        stored = _read(path)
        keys = [prompt_key(prompt) for prompt in prompts]
        missing: dict[str, Text] = {}
        for key, prompt in zip(keys, prompts):
            if key not in stored:
                missing.setdefault(key, prompt)
        if missing:
            outputs = generate(
                model.model, model.tokenizer, list(missing.values()), config, progress=progress, prefills=prefills
            )
            new = dict(zip(missing, outputs))
            _append(path, new, {"spec": model.spec, "identity": model.identity, **decoding_settings(config)})
            stored.update(new)
        self.generated[model.label] = self.generated.get(model.label, 0) + len(missing)
        self.cached[model.label] = self.cached.get(model.label, 0) + len(prompts) - len(missing)
        return [stored[key] for key in keys]


class ResultCache:
    """JSON results under `directory/results/`, keyed by a digest of a JSON-able description of what was computed."""

    def __init__(self, directory: Path):
        self.directory = Path(directory) / "results"

    def _path(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
        return self.directory / f"{key.get('kind', 'result')}-{digest}.json"

    def get(self, key: dict[str, Any]) -> Any | None:
        try:
            return json.loads(self._path(key).read_text(encoding="utf-8"))["value"]
        except (OSError, json.JSONDecodeError, KeyError):
            return None

    def put(self, key: dict[str, Any], value: Any) -> None:
        write_text_atomic(self._path(key), json.dumps({"key": key, "value": value}))


def _read(path: Path) -> dict[str, Generation]:
    stored: dict[str, Generation] = {}
    if not path.is_file():
        return stored
    for number, raw in jsonl_lines(path):
        try:
            row = parse_json_line(raw, f"{path}:{number}")
            if "prompt_key" not in row:  # the header line
                continue
            stored[row["prompt_key"]] = Generation(
                row["text"], row["token_ids"], row["finish_reason"], len(row["token_ids"])
            )
        except (DataError, KeyError, TypeError):
            continue  # a torn line from a killed run: that prompt is generated again
    return stored


def _append(path: Path, generations: dict[str, Generation], header: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not path.exists() or path.stat().st_size == 0
    torn = not new_file and _last_byte(path) != b"\n"
    with open(path, "a", encoding="utf-8") as out:
        if new_file:  # one line saying whose answers these are, for a human reading the cache
            out.write(json.dumps(header, ensure_ascii=False, default=str) + "\n")  # a spec may be a Path
        if torn:  # end the torn line so it stays one unreadable line instead of spoiling the next
            out.write("\n")
        for key, generation in generations.items():
            row = {
                "prompt_key": key,
                "text": generation.text,
                "token_ids": generation.token_ids,
                "finish_reason": generation.finish_reason,
            }
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1)
