"""DPO's reference model: a frozen copy, the policy with its LoRA adapter off, or log-probs cached on disk.

A live reference returns its completion states (hidden states at completion positions and its output head) as well as
log-probs, so the trainer can report the exact KL(policy || reference).
`--precompute-ref` runs the reference once over every pair before training, stores its per-sequence log-probs under
`PREFALIGN_HOME/cache/ref-logps/<key>.pt` and drops the model; a later run with the same key reads the file instead.
The key hashes everything the numbers depend on: the reference weights, the data file, the tokenization settings and
the resulting token ids, and the precision the forward pass ran in.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...console import say
from ...data.collate import PairBatch
from ...data.shared_prefix import SharedPrefixBatch
from ...errors import PrefalignError
from ...fileio import atomic_open, file_digest, write_json_atomic
from ...models.loading import load_model, resolve_model
from ...models.lora import adapter_disabled, is_lora
from ...models.precision import bf16_autocast
from ...models.registry import prefalign_home
from ...scoring.completions import CompletionStates, SequenceLogps
from ...scoring.run import score_completions
from ..precision import uses_bf16

if TYPE_CHECKING:
    from ..config import DPOConfig
    from ..distributed import DistInfo


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """No dropout and no autograd graph for the duration; the previous train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class Reference:
    """The reference policy. `forward` returns (completion states, per-sequence log-probs) like `score_completions`."""

    def __init__(self, model: torch.nn.Module, *, adapter_off: bool = False):
        self.model = model
        self.adapter_off = adapter_off

    def forward(self, batch: PairBatch | SharedPrefixBatch) -> tuple[CompletionStates, SequenceLogps]:
        with _eval_mode(self.model):
            if self.adapter_off:
                with adapter_disabled(self.model):  # type: ignore[arg-type]  # a LoRA policy: a PeftModel
                    return score_completions(self.model, batch)
            return score_completions(self.model, batch)


def build_reference(policy: torch.nn.Module, config: DPOConfig, device: torch.device, *, borrow: bool) -> Reference:
    """The reference for `policy` before its first update.

    LoRA: the policy itself with the adapter disabled. `--ref-model`: that model, frozen. Otherwise a frozen deep copy
    of the policy, unless `borrow` (a one-off precompute pass, when policy still equals reference) uses the policy
    itself and saves the copy.
    """
    if is_lora(policy):
        return Reference(policy, adapter_off=True)
    if config.ref_model:
        model = load_model(config.ref_model, dtype=torch.float32, device=str(device))
        policy_vocab = policy.get_output_embeddings().weight.shape[0]
        ref_vocab = model.get_output_embeddings().weight.shape[0]
        if policy_vocab != ref_vocab:
            raise PrefalignError(
                f"--ref-model {config.ref_model} has {ref_vocab} output tokens and the policy {policy_vocab}: "
                "the reference must share the policy's tokenizer"
            )
    elif borrow:
        return Reference(policy)
    else:
        model = copy.deepcopy(policy)
    model.eval()
    model.requires_grad_(False)
    return Reference(model)


# ---------------------------------------------------------------------------------------------------------------------
# Precomputed reference log-probs


def weights_identity(spec: str) -> dict[str, str]:
    """What a model's outputs depend on: a local directory's path and the digest of its weight and config files, or
    the hub id."""
    resolved = resolve_model(spec)
    directory = Path(resolved)
    if not directory.is_dir():
        return {"hub_id": resolved}
    weights = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    digest = hashlib.sha256()
    for path in weights:
        digest.update(path.name.encode() + file_digest(path).encode())
    return {"dir": str(directory.resolve()), "weights_sha256": digest.hexdigest()}


BF16 = "bf16-autocast"  # the cache key's name for log-probs computed under bf16 autocast


def cache_settings(config: DPOConfig, source: str, items: Sequence[Any], device: torch.device) -> dict[str, Any]:
    """Everything the cached log-probs of `source` depend on (hashed into the cache key)."""
    ids = hashlib.sha256()
    for item in items:
        ids.update(json.dumps([item.pair.prompt_ids, item.pair.chosen_ids, item.pair.rejected_ids]).encode())
    return {
        "reference": weights_identity(config.ref_model or config.model),
        "data_sha256": file_digest(source),
        "tokenize": {
            "max_length": config.max_length,
            "max_prompt_length": config.max_prompt_length,
            "prompt_format": config.prompt_format,
            "tokenizer": config.model,
        },
        "token_ids_sha256": ids.hexdigest(),
        "pairs": len(items),
        "precision": BF16 if uses_bf16(device, config.precision) else "fp32",
    }


def cache_path(settings: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]
    return prefalign_home() / "cache" / "ref-logps" / f"{key}.pt"


def compute_reference_logps(
    reference: Reference,
    items: Sequence[Any],
    collate: Callable[[Sequence[Any]], Any],
    batch_size: int,
    bf16: bool = False,
) -> torch.Tensor:
    """[N, 2] (chosen, rejected) completion log-probs of every pair, in one no-grad pass; under bf16 autocast when
    `bf16`, as a bf16 training computes its live reference."""
    rows = []
    for start in range(0, len(items), batch_size):
        batch = collate(items[start : start + batch_size]).pairs
        with bf16_autocast(bf16, batch.input_ids.device):
            _, logps = reference.forward(batch)
        chosen, rejected = batch.split(logps.sum_logps.float())
        rows.append(torch.stack([chosen, rejected], dim=1).cpu())
    return torch.cat(rows)


def _save_atomically(logps: torch.Tensor, settings: dict[str, Any], path: Path) -> None:
    with atomic_open(path, compress=False) as out:
        torch.save({"logps": logps}, out.buffer)  # torch writes bytes: to the text stream's binary buffer
    write_json_atomic(path.with_suffix(".json"), settings, sort_keys=True)  # beside it, for people: what they are of


def cached_reference_logps(
    reference: Reference,
    items: Sequence[Any],
    settings: dict[str, Any],
    collate: Callable[[Sequence[Any]], Any],
    batch_size: int,
    info: DistInfo,
) -> tuple[torch.Tensor, bool]:
    """The [N, 2] reference log-probs of `items`: read from the cache, or computed and cached, by rank 0, which sends
    them to the other ranks. They are computed at the precision `settings` names, so the key cannot disagree with them.

    Returns (log-probs, whether they came from the cache).
    """
    path = cache_path(settings)
    hit = path.is_file()
    if not hit and info.is_main:
        say(f"computing reference log-probs of {len(items)} pairs (cached in {path})")
        logps = compute_reference_logps(reference, items, collate, batch_size, settings["precision"] == BF16)
        _save_atomically(logps, settings, path)
    logps = torch.load(path, map_location="cpu", weights_only=True)["logps"] if info.is_main else None
    if info.world_size > 1:  # the other ranks take rank 0's: theirs may be another machine's PREFALIGN_HOME
        shared = [logps, hit]
        torch.distributed.broadcast_object_list(shared, src=0)
        logps, hit = shared
    if logps.shape != (len(items), 2):
        raise PrefalignError(f"{path}: holds {tuple(logps.shape)} log-probs for {len(items)} pairs; delete it")
    if hit and info.is_main:
        say(f"reference log-probs of {len(items)} pairs read from {path}")
    return logps, hit
