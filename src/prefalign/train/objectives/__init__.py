"""Training objectives: what the one training loop optimises."""

from ...scoring.run import score_completions
from ..precision import autocast
from .base import Objective
from .dpo import DPOObjective
from .sft import SFTObjective

__all__ = ["DPOObjective", "Objective", "SFTObjective", "autocast", "score_completions"]
