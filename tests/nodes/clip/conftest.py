"""Fixtures of the CLIP tests: tiny random-weight model directories, built once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.nodes.clip.tiny import build_hf_clip, build_tiny_clip


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


@pytest.fixture(scope="session")
def hf_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_hf_clip(tmp_path_factory.mktemp("hf_clip"))
