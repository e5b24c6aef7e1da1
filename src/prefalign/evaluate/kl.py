"""How far a model drifted from the base: KL(model || base) on the evaluation prompts, estimated from samples.

For a prompt x, KL(pi || base) over responses is E_{y ~ pi}[log pi(y|x) - log base(y|x)]. By the chain rule it also
equals E_{y ~ pi}[sum_t KL(pi(.|x, y_<t) || base(.|x, y_<t))]: the exact next-token KL over the whole vocabulary,
summed along a response sampled from the model. Both are unbiased; the second (what is reported) has lower variance,
since each position contributes an exact expectation instead of one sampled token. The log-ratio estimate is kept
beside it as a check (the two agree in expectation).

Responses are sampled from the model at temperature 1 (top_p 1: the model's own distribution), k per prompt, up to
a token budget, so the number reported is the KL of the distributions over the first `max_new_tokens` tokens, in
nats per response. Per prompt the k samples are averaged; the interval is the bootstrap over prompts. Both numbers
come from `prefalign.scoring`, as DPO's `kl` metric and log-probs do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..data.collate import pad_sequences
from ..data.tokenize import PromptFormat, prompt_token_ids
from ..generate import Generation
from .models import EvalModel
from .prompt_set import EvalPrompt

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
    prompts: list[EvalPrompt],
    samples: list[list[Generation]],
    *,
    prompt_format: PromptFormat,
    batch_size: int,
) -> KLEstimate:
    """KL(policy || base) per prompt from `samples` (k lists, each one sample of the policy per prompt)."""
    import torch  # torch loads on first use, not when the evaluation's options are read

    from ..scoring.completions import completion_kl
    from ..scoring.run import score_completions

    tokenizer = policy.tokenizer
    prompt_ids = [prompt_token_ids(p.prompt, tokenizer, prompt_format) for p in prompts]
    rows = [(i, prompt_ids[i], draw[i].token_ids) for draw in samples for i in range(len(prompts))]
    rows.sort(key=lambda row: -(len(row[1]) + len(row[2])))  # similar lengths share a batch: less padding
    n = len(prompts)
    kl_sum, logratio_sum, token_sum = [0.0] * n, [0.0] * n, [0.0] * n
    pad_id = tokenizer.pad_token_id
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            lm = pad_sequences([r[1] for r in batch], [r[2] for r in batch], pad_id)
            policy_states, policy_logps = score_completions(policy.model, lm.to(policy.model.device))
            base_states, base_logps = score_completions(base.model, lm.to(base.model.device))
            kl = completion_kl(policy_states, base_states)
            logratio = policy_logps.sum_logps - base_logps.sum_logps.to(policy_logps.sum_logps.device)
            for (index, _, completion), k, r in zip(batch, kl.tolist(), logratio.tolist()):
                kl_sum[index] += k
                logratio_sum[index] += r
                token_sum[index] += len(completion)
    draws = len(samples)
    return KLEstimate([k / draws for k in kl_sum], [r / draws for r in logratio_sum], [t / draws for t in token_sum])
