"""The one way prefalign scores a model's completions, shared by training, evaluation and the pair tools.

- `prefalign.scoring.preference`: the preference vocabulary, on floats or tensors alike (no torch import): the
  implicit reward beta * (log pi - log ref), the margin of a pair, a pair's outcome for accuracy (a tie counts half),
  and the names of the preference losses.
- `prefalign.scoring.completions`: a model's final hidden states at a batch's completion tokens, and what they give:
  per-sequence log-probabilities and the exact KL between two models.
- `prefalign.scoring.run`: running a model on a batch to get those states (and the batch inputs it takes).

This package imports nothing itself, so that `preference` can be used without loading torch.
"""
