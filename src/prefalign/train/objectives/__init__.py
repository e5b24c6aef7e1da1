"""Training objectives: what the one training loop optimises."""

from .base import Objective, autocast, policy_forward
from .dpo import DPOObjective
from .sft import SFTObjective

__all__ = ["DPOObjective", "Objective", "SFTObjective", "autocast", "policy_forward"]
