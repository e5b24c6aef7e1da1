"""The demo: the whole alignment workflow as resumable stages (`prefalign demo`). See `run.py` for the stages."""

from .config import QUICK, DemoConfig
from .run import STAGES, run_demo

__all__ = ["QUICK", "STAGES", "DemoConfig", "run_demo"]
