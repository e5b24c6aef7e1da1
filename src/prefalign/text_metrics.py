"""Measures of a response's text shared by the stages that build data and the evaluation that reads the results.

Repetition is the fraction of repeated word n-grams, 1 - distinct / total (n = `REPETITION_N`, words lower-cased): 0
for text without a repeated 4-word sequence, near 1 for a degenerate loop. Fewer than n words give 0. The evaluation
reports it per model; pair building and SFT sampling can refuse a chosen response or a target above a limit, so that a
loop the verifier happens to accept (the same bullet written four times) is not what the model is taught.
"""

from __future__ import annotations

REPETITION_N = 4


def repetition(text: str, n: int = REPETITION_N) -> float:
    """1 - distinct n-grams / n-grams over the lower-cased words of `text` (0 when it has fewer than n words)."""
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)
