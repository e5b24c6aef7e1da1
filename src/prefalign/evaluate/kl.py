"""How far a model drifted from the base: KL(model || base) on the evaluation prompts, estimated from samples.

For a prompt x, KL(pi || base) over responses is E_{y ~ pi}[log pi(y|x) - log base(y|x)]. By the chain rule it also
equals E_{y ~ pi}[sum_t KL(pi(.|x, y_<t) || base(.|x, y_<t))]: the exact next-token KL over the whole vocabulary,
summed along a response sampled from the model. Both are unbiased; the second (what is reported) has lower variance,
since each position contributes an exact expectation instead of one sampled token. The log-ratio estimate is kept
beside it as a check (the two agree in expectation).

Responses are sampled from the model at temperature 1 (top_p 1: the model's own distribution), k per prompt, up to
a token budget, so the number reported is the KL of the distributions over the first `max_new_tokens` tokens, in
nats per response. The base decodes each sampled token alongside the model (`generate(..., reference=base)`), so both
sums come out of the sampling itself, with no second pass over the answers; and the prompts' prefills of both models
can come from the greedy passes that ran before (`PromptPrefills`). Per prompt the k samples are averaged; the
interval is the bootstrap over prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..data.records import Text
from ..generate import GenerationConfig, PromptPrefills, generate
from .models import EvalModel

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class KLEstimate:
    """Per prompt, averaged over its samples: the exact-per-token KL sum, the log-ratio sum, the sample length."""

    kl: list[float]
    logratio: list[float]
    tokens: list[float]


def same_vocabulary(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """True when both tokenizers map the same strings to the same ids: log-probs of one sequence are comparable."""
    return a.get_vocab() == b.get_vocab()


def kl_from_base(
    policy: EvalModel,
    base: EvalModel,
    prompts: list[Text],
    config: GenerationConfig,
    samples: int,
    progress: bool,
    prefills: tuple[PromptPrefills | None, PromptPrefills | None] = (None, None),
) -> KLEstimate:
    """KL(policy || base) per prompt from `samples` answers of the policy per prompt, sampled under `config` with
    seeds `config.seed`, `config.seed + 1`, ... (give it temperature 1 and top_p 1: the policy's own distribution).
    `prefills`: the policy's and the base's kept prompt prefills, if any."""
    n = len(prompts)
    kl_sum, logratio_sum, token_sum = [0.0] * n, [0.0] * n, [0.0] * n
    for draw in range(samples):
        drawn = replace(config, seed=config.seed + draw)
        answers = generate(
            policy.model,
            policy.tokenizer,
            prompts,
            drawn,
            reference=base.model,
            progress=progress,
            prefills=prefills[0],
            reference_prefills=prefills[1],
        )
        for index, answer in enumerate(answers):
            kl_sum[index] += answer.kl or 0.0
            logratio_sum[index] += answer.logratio or 0.0
            token_sum[index] += answer.num_tokens
    return KLEstimate(
        [k / samples for k in kl_sum], [r / samples for r in logratio_sum], [t / samples for t in token_sum]
    )
