"""Load a model or tokenizer from whatever the user typed: a registered name, a local directory, or a hub id.

Safety: remote code runs only when the user asks for it (`--trust-remote-code`), and weights are read by transformers'
defaults (safetensors, or `torch.load(weights_only=True)` for old .bin files); nothing here loosens either.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..console import library_progress_hidden
from ..errors import ModelError
from .registry import REGISTRY, is_present, model_dir

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# `org/name` as the hub spells repository ids. Anything else with a path separator is taken for a local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _looks_local(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~", ".\\")) or "\\" in spec or spec in (".", "..")


def resolve_model(spec: str) -> str:
    """What to hand to `from_pretrained`: a registered model's directory, a local directory, or a hub id.

    Raises ModelError for a registered model that was not pulled, a local path that does not exist or holds no model,
    and a bare word that is neither registered nor a directory.
    """
    if spec in REGISTRY:
        if not is_present(spec):
            raise ModelError(f"model '{spec}' is not pulled yet: run `prefalign models pull {spec}`")
        return str(model_dir(spec))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a Hugging Face model directory (it has no config.json)")
        return str(path)
    if path.exists():
        raise ModelError(f"{path}: is a file; a model is a directory (with config.json), a registered name or a hub id")
    if _looks_local(spec) or not _HUB_ID.match(spec):
        known = ", ".join(sorted(REGISTRY))
        raise ModelError(
            f"model '{spec}' not found: it is not a local directory, a registered name ({known}) or a hub id (org/name)"
        )
    return spec


def check_model(spec: str, option: str = "--model", *, pullable: bool = False) -> None:
    """Fail now, naming `option`, if `spec` cannot name a model (see `resolve_model`): a command's check before it
    loads data or other models. With `pullable`, a registered model not pulled yet passes (the caller pulls it)."""
    if pullable and spec in REGISTRY:
        return
    try:
        resolve_model(spec)
    except ModelError as exc:
        raise ModelError(f"{option}: {exc}") from None


def default_device() -> str:
    """`cuda` when a GPU is visible, else `cpu`."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _default_dtype(device: str) -> torch.dtype:
    import torch

    # bf16 halves memory and is what modern GPUs compute fastest; on CPU fp32 is both faster and exact.
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _from_pretrained(loader: Any, spec: str, resolved: str, **kwargs: Any) -> Any:
    try:
        with library_progress_hidden():  # transformers' "Loading weights" bar, one per load: shown with --verbose
            return loader.from_pretrained(resolved, **kwargs)
    except OSError as exc:  # missing files, hub unreachable, private repo: transformers raises OSError for all of them
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load '{spec}': {first_line}") from None
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ModelError(
                f"'{spec}' needs custom code from its repository; rerun with --trust-remote-code if you trust it"
            ) from None
        raise


def load_tokenizer(spec: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of `spec`, with a pad token (the eos token when it has none).

    The padding side is left as the tokenizer ships it: each caller pads the way it needs (generation pads on the
    left itself, training pads on the right), so nothing here decides it.
    """
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, spec, resolve_model(spec), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"the tokenizer of '{spec}' has neither a pad nor an eos token; prefalign needs one")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    spec: str,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """A causal LM from `spec` on `device` (default: `default_device()`) in eval mode.

    `dtype` defaults to float32 on CPU and bfloat16 on a GPU that supports it; a string such as "bfloat16" works too.
    """
    import torch
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    if dtype is None:
        dtype = _default_dtype(device)
    elif isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ModelError(f"unknown dtype '{dtype}' (use float32, bfloat16 or float16)")
        dtype = getattr(torch, dtype)
    model = _from_pretrained(
        AutoModelForCausalLM, spec, resolve_model(spec), dtype=dtype, trust_remote_code=trust_remote_code
    )
    return model.to(device).eval()


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokens that end a response: the tokenizer's eos and every eos the model's generation config lists (chat
    models often stop on an end-of-turn token other than the tokenizer's eos), sorted."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(ids)
