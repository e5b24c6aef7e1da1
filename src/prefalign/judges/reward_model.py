"""`reward-model:PATH`: a reward model trained by `prefalign rm train`, as a pointwise judge.

Each (prompt, response) is rendered and truncated exactly as in training, and its reward is the score; `compare` (from
the base class) prefers the higher reward. A response that leaves nothing to score after truncation (an empty answer,
a prompt that fills --max-length) gets no score, with the reason, rather than a guess.
"""

from __future__ import annotations

from pathlib import Path

from ..data.tokenize import TokenizeConfig
from .base import Judge, JudgeItem, Score


class RewardModelJudge(Judge):
    """Scores responses with the reward model saved at `path` (a model directory, or a `rm train` run directory):
    an adapter with its head on top of the base model it names, or a full model with its head."""

    name = "reward-model"

    def __init__(
        self,
        path: str | Path,
        *,
        batch_size: int = 8,
        tokenize: TokenizeConfig | None = None,
        device: str | None = None,
    ):
        from ..models.reward import load_reward_model, load_reward_tokenizer

        self.path = str(path)
        self.model = load_reward_model(path, device=device)
        self.tokenizer = load_reward_tokenizer(path)
        self.batch_size = batch_size
        self.tokenize = tokenize or TokenizeConfig()
        self.name = f"reward-model:{path}"
        # Matmul precision of scoring: fp32, or bf16 autocast (the evaluation sets it from its --dtype, so that
        # every forward pass of one evaluation runs at the same precision).
        self.bf16 = False
        self.progress = True  # a bar over the answers scored (hidden with --quiet)

    def score(self, items: list[JudgeItem]) -> list[Score]:
        from ..data.tokenize import tokenize_sft
        from ..models.precision import bf16_autocast, model_device
        from ..models.reward import score_token_rows

        examples = [tokenize_sft(item.prompt, item.response, self.tokenizer, self.tokenize) for item in items]
        kept = [i for i, example in enumerate(examples) if not example.dropped]
        rows = [(examples[i].prompt_ids, examples[i].completion_ids) for i in kept]
        with bf16_autocast(self.bf16, model_device(self.model)):
            scored = score_token_rows(
                self.model, rows, self.tokenizer.pad_token_id, self.batch_size, progress=self.progress
            )
        rewards = dict(zip(kept, scored))
        return [
            Score(rewards[i]) if i in rewards else Score(None, error=f"nothing to score: {example.drop_reason}")
            for i, example in enumerate(examples)
        ]
