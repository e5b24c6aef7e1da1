"""Training: one loop (`loop.train`) shared by every objective (`objectives`), configured by `config`.

Importing this package stays light (no torch) so the command line starts fast; import `prefalign.train.loop` to train.
"""

from .config import DPOConfig, SFTConfig, TrainConfig

__all__ = ["DPOConfig", "SFTConfig", "TrainConfig"]
