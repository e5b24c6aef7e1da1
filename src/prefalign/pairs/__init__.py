"""Preference pairs from your own model, picked by a judge: `build_pairs` writes them, `pair_stats` describes them."""

from .build import (
    SKIP_STATUSES,
    BuildReport,
    PairsConfig,
    PromptRecord,
    build_pairs,
    read_prompt_records,
    skipped_path,
)
from .stats import format_stats, pair_stats

__all__ = [
    "SKIP_STATUSES",
    "BuildReport",
    "PairsConfig",
    "PromptRecord",
    "build_pairs",
    "format_stats",
    "pair_stats",
    "read_prompt_records",
    "skipped_path",
]
