"""Shared fixtures: the data folder (``DEEPEXP3D_DATA``) and the default model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from morphable.paths import data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder; skips the test when it is missing."""
    path = data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set DEEPEXP3D_DATA)")
    return path


@pytest.fixture(scope="session")
def ict_cache(tmp_path_factory) -> Path:
    """A cache folder shared by the whole test session (converted once)."""
    configured = os.environ.get("DEEPEXP3D_TEST_CACHE")
    if configured:
        return Path(configured)
    return tmp_path_factory.mktemp("deepexp3d-cache")


@pytest.fixture(scope="session")
def ict_model(shared_data, ict_cache):
    """The ICT-FaceKit light model loaded from the shared archive (full head)."""
    from morphable.io import load_ict

    archive_dir = shared_data / "ict-facekit"
    if not any(archive_dir.glob("*.tar.xz")):
        pytest.skip(f"ICT-FaceKit archive not found in {archive_dir}")
    return load_ict(cache_dir=ict_cache)


@pytest.fixture(scope="session")
def ict_face_model(shared_data, ict_cache):
    """The ICT-FaceKit light model restricted to the face area (vertices 0–9408)."""
    from morphable.io import load_ict

    archive_dir = shared_data / "ict-facekit"
    if not any(archive_dir.glob("*.tar.xz")):
        pytest.skip(f"ICT-FaceKit archive not found in {archive_dir}")
    return load_ict(cache_dir=ict_cache, region="face")
