"""The reward model: a causal LM with a scalar head on the final hidden state of each sequence's last real token.

    r(x, y) = w . h_L(x + y)[last non-padding position],   w: Linear(hidden_size, 1, bias=False)

The head has no bias: the pairwise loss only ever sees reward differences, so a bias would be a parameter no gradient
reaches. Rows may be padded, or laid out as DPO's are (`prefalign.data.shared_prefix`: [prompt | chosen | rejected],
the prompt computed once), the reward then read at the last token of each response. The LM keeps its output layer,
so one forward gives both the rewards and the completion states (`prefalign.scoring`) an auxiliary LM loss needs.

A saved reward model is a directory that reloads exactly, head included, in one of two layouts:

    reward_model.json          {"format": "prefalign-reward-model", "version": 1, "adapter": bool, "base_model": ...,
                                "hidden_size": H}
    reward_head.safetensors    the head's weight [1, H] ("weight", fp32)
    + LoRA: the peft adapter (adapter_config.json, adapter_model.safetensors): only what was trained (19 MB for
      SmolLM2-135M at rank 16 on every linear layer, against 540 MB for the model). "base_model" names the model
      under it (a registry name, an absolute directory or a hub id);
      peft alone rebuilds the LM: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), directory)
    + a full fine-tune, or a LoRA model merged (`merged_copy`): the LM as a Hugging Face model directory
      (config.json, model.safetensors, ...), standalone
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from ..console import progress_bar
from ..data.collate import CompletionIndex, pad_sequences
from ..data.shared_prefix import SPANS_KWARG, collate_prompt_groups
from ..errors import ModelError
from ..fileio import write_json_atomic
from ..scoring.completions import CompletionStates
from ..scoring.run import checked_inputs, enable_pair_attention, final_hidden_states, hidden_and_completion_states
from .lora import is_lora, load_adapter, merged_copy

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

META_FILE = "reward_model.json"
HEAD_FILE = "reward_head.safetensors"
_FORMAT, _VERSION = "prefalign-reward-model", 1


class RewardOutput(NamedTuple):  # a tuple, so DistributedDataParallel can walk it
    rewards: torch.Tensor  # [N] fp32, one per row
    lm_states: CompletionStates | None  # the LM's states at the completion tokens asked for (an auxiliary LM loss)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per row, the position of the last 1 in `attention_mask` [N, T]: right or left padding alike."""
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.flip(-1).to(torch.long).argmax(-1)


class RewardModel(nn.Module):
    """`lm` (a transformers causal LM, or a peft model around one) plus `reward_head`.

    `base_model` names the model the LM was loaded from (registry name, directory or hub id); a LoRA reward model is
    saved as its adapter and reloaded on top of that model.
    """

    def __init__(self, lm: nn.Module, base_model: str, head: nn.Linear | None = None):
        super().__init__()
        self.lm = lm
        self.base_model = base_model
        hidden_size = lm.config.hidden_size
        reference = next(lm.parameters())
        if head is None:
            head = nn.Linear(hidden_size, 1, bias=False)
            # Rewards start at the scale of the hidden state's RMS and draw from torch's global RNG: seed it first.
            nn.init.normal_(head.weight, std=1.0 / math.sqrt(hidden_size + 1))
        if head.bias is not None or tuple(head.weight.shape) != (1, hidden_size):
            raise ModelError(f"a reward head is Linear({hidden_size}, 1, bias=False), got {head}")
        self.reward_head = head.to(device=reference.device, dtype=reference.dtype)

    @property
    def config(self) -> object:
        return self.lm.config

    @property
    def is_lora(self) -> bool:
        return is_lora(self.lm)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        lm_index: CompletionIndex | None = None,
        reward_positions: torch.Tensor | None = None,
        **layout: Any,
    ) -> RewardOutput:
        """Rewards [N], read at `reward_positions` (flat positions into the batch's rows) or, without them, at each
        row's last real token; with `lm_index`, also the LM's completion states at those tokens.

        `layout` carries what a batch layout of `prefalign.data.shared_prefix` adds to its model inputs (position
        ids, pair spans); without it, rows are padded and `attention_mask` [N, T] says where the real tokens are.
        The LM's output layer runs at `lm_index`'s tokens only, and not at all without it: over the vocabulary it is
        a fifth of a small model's forward, and its [N, T, V] output would be the largest tensor of the step.
        """
        inputs = {"input_ids": input_ids, **layout}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
        inputs = checked_inputs(self.lm, inputs)
        # The final hidden states, after the final norm: what the LM's own output layer reads.
        if lm_index is None:
            final, lm_states = final_hidden_states(self.lm, inputs), None
        else:
            final, lm_states = hidden_and_completion_states(self.lm, inputs, lm_index)
        if reward_positions is None:
            if attention_mask is None or attention_mask.dim() != 2:
                raise ValueError("rewards of rows that are not padded need reward_positions")
            width = attention_mask.shape[1]
            rows = torch.arange(attention_mask.shape[0], device=final.device)
            reward_positions = rows * width + last_token_index(attention_mask)
        last = final.reshape(-1, final.shape[-1])[reward_positions]
        return RewardOutput(self.reward_head(last).squeeze(-1).float(), lm_states)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the directory `load_reward_model` reads (the training loop's final save calls this too)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_file

        self.lm.save_pretrained(str(path))  # peft: the adapter only; transformers: the whole LM
        save_file({"weight": self.reward_head.weight.detach().float().cpu().contiguous()}, str(path / HEAD_FILE))
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "adapter": self.is_lora,
            "base_model": self.base_model,
            "hidden_size": self.config.hidden_size,
        }
        write_json_atomic(path / META_FILE, meta)
        return path

    def merged_copy(self) -> RewardModel:
        """A full reward model: the LoRA adapter folded into the LM's weights, under a copy of the head. Saved, it
        needs no base model and no peft; `self` is left unchanged. A full fine-tune is returned as a copy too."""
        import copy

        # is_lora means self.lm is a PeftModel, which the nn.Module annotation cannot say.
        lm = merged_copy(self.lm) if self.is_lora else copy.deepcopy(self.lm)  # type: ignore[arg-type]  # see above
        return RewardModel(lm, self.base_model, copy.deepcopy(self.reward_head)).train(self.training)


def base_model_spec(spec: str) -> str:
    """`spec` as a saved reward model should name it: local directories absolute, registry names and hub ids as is."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.is_dir() else spec


def reward_model_dir(path: str | Path) -> Path:
    """The saved reward model at `path`: the directory itself, or a training run's `final/` under it."""
    path = Path(path).expanduser()
    for candidate in (path, path / "final"):
        if (candidate / META_FILE).is_file():
            return candidate
    raise ModelError(f"{path}: not a reward model saved by `prefalign rm train` (no {META_FILE} in it or in final/)")


def read_meta(directory: Path) -> dict[str, Any]:
    """The reward_model.json of a saved reward model, checked."""
    try:
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{directory / META_FILE}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
        raise ModelError(f"{directory / META_FILE}: not a {_FORMAT} version {_VERSION} file")
    return meta


def load_reward_model(
    path: str | Path, *, device: str | None = None, dtype: torch.dtype | str | None = None
) -> RewardModel:
    """A reward model saved by `RewardModel.save_pretrained` (or a run directory holding one in final/), in eval mode.

    dtype and device default as in `prefalign.models.loading.load_model` (fp32 on CPU).
    """
    from safetensors.torch import load_file

    from .loading import load_model

    directory = reward_model_dir(path)
    meta = read_meta(directory)
    if meta["adapter"]:
        base = load_model(meta["base_model"], dtype=dtype, device=device)
        lm: nn.Module = load_adapter(base, directory)
    else:
        lm = load_model(str(directory), dtype=dtype, device=device)
    weight = load_file(str(directory / HEAD_FILE))["weight"]
    head = nn.Linear(weight.shape[1], 1, bias=False)
    with torch.no_grad():
        head.weight.copy_(weight)
    return RewardModel(lm, meta["base_model"], head).eval()


def load_reward_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer a saved reward model was trained with: the one saved beside it (a training run's final/ has
    it), else its base model's (training never changes the tokenizer)."""
    from .loading import load_tokenizer

    directory = reward_model_dir(path)
    if (directory / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        if tokenizer.pad_token is None:  # as load_tokenizer does; training padded with the same token
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    return load_tokenizer(read_meta(directory)["base_model"])


def with_untrained_head(spec: str, *, seed: int, device: str | None = None) -> RewardModel:
    """The causal LM `spec` under a freshly drawn head: a chance-level baseline, not a reward model."""
    from .loading import load_model

    lm: PreTrainedModel = load_model(spec, dtype=torch.float32, device=device)
    torch.manual_seed(seed)
    return RewardModel(lm, base_model_spec(spec)).eval()


@torch.no_grad()
def score_token_rows(
    model: RewardModel,
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_id: int,
    batch_size: int = 8,
    *,
    progress: bool = False,
) -> list[float]:
    """The reward of each (prompt_ids, completion_ids) row, in order; with `progress`, a bar counts the rows scored
    (an evaluation's few hundred answers take minutes on a CPU).

    Where the LM runs pair attention, rows with the same prompt share one computation of it: each prompt and all its
    distinct responses form one span of a padding-free row (`collate_prompt_groups`), whole prompts adding up to
    about `batch_size` responses per forward, and a response given twice to one prompt is scored once (an
    evaluation scores every model's answer to each prompt: the prompt is computed once, not once per model).
    Otherwise rows are padded, `batch_size` per forward."""
    if not rows:
        return []
    with progress_bar(total=len(rows), unit="answer", desc="reward model", disable=not progress) as bar:
        if all(prompt and completion for prompt, completion in rows) and enable_pair_attention(model.lm):
            return _score_prompt_groups(model, rows, batch_size, bar.update)
        return _score_padded_rows(model, rows, pad_id, batch_size, bar.update)


def _score_prompt_groups(
    model: RewardModel,
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int,
    scored_rows: Callable[[int], object] = lambda n: None,
) -> list[float]:
    device = next(model.parameters()).device
    # prompt -> its distinct responses (dicts keep first-seen order) -> the rows that gave that response
    groups: dict[tuple[int, ...], dict[tuple[int, ...], list[int]]] = {}
    for i, (prompt, completion) in enumerate(rows):
        groups.setdefault(tuple(prompt), {}).setdefault(tuple(completion), []).append(i)
    chunks: list[list[tuple[tuple[int, ...], dict[tuple[int, ...], list[int]]]]] = [[]]
    for unit in groups.items():
        if sum(len(responses) for _, responses in chunks[-1]) >= batch_size:
            chunks.append([])
        chunks[-1].append(unit)
    rewards = [0.0] * len(rows)
    for chunk in chunks:
        row = collate_prompt_groups([(list(prompt), [list(r) for r in responses]) for prompt, responses in chunk])
        out = model(
            input_ids=row.input_ids.to(device),
            position_ids=row.position_ids.to(device),
            reward_positions=row.response_ends.to(device),
            **{SPANS_KWARG: row.spans},
        )
        scored = iter(out.rewards.tolist())
        for _, responses in chunk:
            for indices in responses.values():
                reward = next(scored)
                for i in indices:
                    rewards[i] = reward
                scored_rows(len(indices))
    return rewards


def _score_padded_rows(
    model: RewardModel,
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_id: int,
    batch_size: int,
    scored_rows: Callable[[int], object] = lambda n: None,
) -> list[float]:
    device = next(model.parameters()).device
    # Longest first: rows of similar length share a batch, so little compute goes to padding; order restored after.
    order = sorted(range(len(rows)), key=lambda i: -(len(rows[i][0]) + len(rows[i][1])))
    by_index: dict[int, float] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = pad_sequences([rows[i][0] for i in chunk], [rows[i][1] for i in chunk], pad_id).to(device)
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        by_index.update(zip(chunk, out.rewards.tolist()))
        scored_rows(len(chunk))
    return [by_index[i] for i in range(len(rows))]
