"""The models under evaluation: what each `--model LABEL=SPEC` loads, what identifies it, loaded only when needed.

A spec is anything `load_model` takes (registered name, HF directory, hub id), and also:

* a peft LoRA adapter directory (`adapter_config.json`, no `config.json`), as `prefalign sft/dpo --lora` write to
  `RUN/final`: the base model named in the adapter's config is loaded, the adapter applied and merged (a merged model
  decodes faster and computes the same function). The tokenizer is the base model's: training never changes it.
* a training run directory (`RUN`, holding `final/`): its `final/merged` model when there is one, else `final`.

A model's identity keys the generation cache. For a local model it is a SHA-256 of the directory's top-level files
(weights, config, tokenizer, chat template: everything that changes what the model generates), plus the adapter's
files for an adapter; for a hub id, the id itself. Hashing half a gigabyte takes a second or two, so file digests are
remembered in a small JSON file keyed by (path, size, modification time).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelError
from ..fileio import file_digest, write_text_atomic
from ..models.loading import resolve_model
from ..models.lora import load_adapter

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class ModelSource:
    """`path`: what `from_pretrained` loads (a directory or hub id); `adapter`: a LoRA directory applied on top."""

    spec: str
    path: str
    adapter: str | None = None


def resolve_source(spec: str) -> ModelSource:
    """Where the model of `spec` comes from; ModelError if it is nowhere."""
    directory = Path(spec).expanduser()
    if directory.is_dir() and not (directory / "config.json").is_file():
        if (directory / ADAPTER_CONFIG).is_file():
            return ModelSource(spec, resolve_model(_adapter_base(directory)), str(directory))
        final = directory / "final"
        if final.is_dir():
            merged = final / "merged"
            inner = resolve_source(str(merged if (merged / "config.json").is_file() else final))
            return ModelSource(spec, inner.path, inner.adapter)
    return ModelSource(spec, resolve_model(spec))


def _adapter_base(directory: Path) -> str:
    config_path = directory / ADAPTER_CONFIG
    try:
        base = json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError, AttributeError) as error:
        raise ModelError(f"{config_path}: not a readable adapter config ({error})") from None
    if not isinstance(base, str) or not base:
        raise ModelError(f"{config_path}: names no base model (base_model_name_or_path)")
    return base


class DigestMemo:
    """SHA-256 of files, remembered in a JSON file by (absolute path, size, mtime) so unchanged files are read once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._entries: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            self._entries = {}

    def file_digest(self, file: Path) -> str:
        stat = file.stat()
        key = str(file.resolve())
        entry = self._entries.get(key)
        if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            return entry["sha256"]
        sha256 = file_digest(file)
        self._entries[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
        self._save()
        return sha256

    def directory_digest(self, directory: Path) -> str:
        """A digest of the directory's top-level files, names included (subdirectories are other models)."""
        digest = hashlib.sha256()
        for file in sorted(p for p in Path(directory).iterdir() if p.is_file()):
            digest.update(f"{file.name}\0{self.file_digest(file)}\0".encode())
        return digest.hexdigest()

    def _save(self) -> None:
        write_text_atomic(self.path, json.dumps(self._entries, indent=1))


def model_files_digest(source: ModelSource, digests: DigestMemo) -> str:
    """What the generation cache keys on: the content of the model's (and adapter's) files, or the hub id."""
    base = Path(source.path)
    parts = [f"dir:{digests.directory_digest(base)}" if base.is_dir() else f"hub:{source.path}"]
    if source.adapter is not None:
        parts.append(f"adapter:{digests.directory_digest(Path(source.adapter))}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


class EvalModel:
    """One model under evaluation, by label. The weights load on first use of `.model` and go with `release()`."""

    def __init__(self, label: str, spec: str, digests: DigestMemo, *, trust_remote_code: bool = False):
        self.label = label
        self.spec = spec
        self.source = resolve_source(spec)
        self._digests = digests
        self._trust_remote_code = trust_remote_code
        self._identity: str | None = None
        self._model: PreTrainedModel | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.loads = 0  # how many times the weights were loaded: a fully cached evaluation loads none

    @property
    def identity(self) -> str:
        if self._identity is None:
            self._identity = model_files_digest(self.source, self._digests)
        return self._identity

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            from ..models.loading import load_tokenizer

            self._tokenizer = load_tokenizer(self.source.path, trust_remote_code=self._trust_remote_code)
        return self._tokenizer

    @property
    def model(self) -> PreTrainedModel:
        if self._model is None:
            from ..models.loading import load_model

            model = load_model(self.source.path, trust_remote_code=self._trust_remote_code)
            if self.source.adapter is not None:
                model = load_adapter(model, self.source.adapter).merge_and_unload().eval()
            self._model = model
            self.loads += 1
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def release(self) -> None:
        """Drop the weights (the next `.model` loads them again) and give their GPU memory back."""
        if self._model is None:
            return
        import torch

        self._model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
