"""Row-sparse embedding gradients: AdamW state only for the vocabulary rows a run has touched, exact to dense AdamW.

When a model's input embedding is trained but its output layer over the vocabulary is not used (a reward model with
--lm-weight 0), the embedding's gradient is zero outside the rows of the tokens a batch holds. As a dense tensor, with
AdamW's two dense moments, it takes 12 bytes per vocabulary entry and hidden unit, almost all of them zeros:
SmolLM2-135M's 49,152 x 576 embedding (tied to its unused output layer) carries 0.32 GiB of the 2.0 GiB that its
full fine-tuning needs for weights, gradients and AdamW's moments. Here the embedding hands back a sparse gradient
(`torch.nn.Embedding(sparse=True)`), and the optimizer keeps moments for the rows some step has touched only.

Why this is AdamW's update exactly: a row whose gradient has always been zero has zero moments, so its Adam step is
0 / (0 + eps) = 0, and only the decoupled weight decay moves it, which `AdamWithSparseRows` applies to every row as
torch's AdamW does. A row once touched keeps non-zero moments that move it on though its later gradients are zero, so
it stays in the state for good and takes every later step, as in the dense update. Values equal torch's AdamW up to
float rounding (its fused kernel orders the arithmetic its own way), which the tests check.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


def use_sparse_embedding_grads(model: torch.nn.Module) -> bool:
    """Make `model`'s input embedding hand back row-sparse gradients, when it is trained; True if it now does.

    Only for a model whose output layer over the vocabulary never runs in training: a dense gradient from a tied
    output layer and a sparse one from the lookup do not add up into one sparse tensor. One process only (DDP and
    FSDP reduce dense gradients)."""
    embedding = model.get_input_embeddings()
    if type(embedding) is not torch.nn.Embedding or not embedding.weight.requires_grad:
        return False
    embedding.sparse = True
    return True


class AdamWithSparseRows(torch.optim.AdamW):
    """`torch.optim.AdamW` that also takes row-sparse gradients (see the module docstring); with dense gradients only,
    it is AdamW. State of a row-sparse parameter: `step`, the sorted ids of the `rows` touched so far, and their
    `exp_avg` and `exp_avg_sq` ([len(rows), width])."""

    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:  # the gradients first, then every parameter's update from them
            with torch.enable_grad():
                loss = closure()
        sparse = [
            (group, param)
            for group in self.param_groups
            for param in group["params"]
            if param.grad is not None and param.grad.is_sparse
        ]
        grads = [param.grad for _, param in sparse]
        for _, param in sparse:
            param.grad = None  # AdamW's own step skips a parameter without a gradient
        try:
            super().step()
        finally:
            for (_, param), grad in zip(sparse, grads):
                param.grad = grad
        with torch.no_grad():
            for (group, param), grad in zip(sparse, grads):
                self._rows_step(group, param, grad)
        return loss

    def _rows_step(self, group: dict[str, Any], param: torch.Tensor, grad: torch.Tensor) -> None:
        if group["amsgrad"] or group["maximize"]:
            raise ValueError("row-sparse gradients take plain AdamW (no amsgrad, no maximize)")
        grad = grad.coalesce()
        state = self._grown_state(param, grad.indices()[0])
        rows_grad = torch.zeros_like(state["exp_avg"])
        rows_grad[torch.searchsorted(state["rows"], grad.indices()[0])] = grad.values()
        lr, weight_decay, eps = float(group["lr"]), group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = float(state["step"])
        if weight_decay:
            param.mul_(1 - lr * weight_decay)  # every row, as torch's AdamW decays every element
        state["exp_avg"].lerp_(rows_grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(rows_grad, rows_grad, value=1 - beta2)
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
        rows = param[state["rows"]]
        rows.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1**step))
        param[state["rows"]] = rows

    def _grown_state(self, param: torch.Tensor, touched: torch.Tensor) -> dict[str, Any]:
        """`param`'s state with the rows of `touched` added (zero moments), rows kept sorted."""
        state = self.state[param]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["rows"] = torch.empty(0, dtype=torch.long, device=param.device)
            state["exp_avg"] = param.new_zeros(0, *param.shape[1:])
            state["exp_avg_sq"] = param.new_zeros(0, *param.shape[1:])
        new = touched[~torch.isin(touched, state["rows"])]
        if len(new):
            rows, order = torch.sort(torch.cat([state["rows"], new]))
            state["rows"] = rows
            for key in ("exp_avg", "exp_avg_sq"):
                state[key] = torch.cat([state[key], state[key].new_zeros(len(new), *param.shape[1:])])[order]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for state in self.state.values():
            if "rows" in state:  # torch casts every state tensor to the parameter's dtype on load; ids are integers
                state["rows"] = state["rows"].round().long()


def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` (the 2-norm of all gradients together, scaled down to `max_norm` if above)
    that also takes row-sparse gradients, which torch's norm does not."""
    params = [param for param in params if param.grad is not None]
    if not any(param.grad.is_sparse for param in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    for param in params:
        if param.grad.is_sparse:
            param.grad = param.grad.coalesce()  # a row repeated in the batch is one row of the gradient
    norms = [torch.linalg.vector_norm(param.grad.values() if param.grad.is_sparse else param.grad) for param in params]
    total = torch.linalg.vector_norm(torch.stack(norms))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for param in params:
        param.grad.mul_(scale)
    return total
