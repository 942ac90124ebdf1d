"""Shared fixtures: one SynthDASB tiny build per test session."""

from pathlib import Path

import pytest

from mmllm.data.synth import SynthConfig, build


@pytest.fixture(scope="session")
def synth_tiny(tmp_path_factory) -> Path:
    """SynthDASB `tiny` (all tasks), built once per session (~5 s)."""
    return build(
        SynthConfig.from_name("tiny"), tmp_path_factory.mktemp("synthdasb") / "tiny", workers=2
    )
