"""ICT-FaceKit loading: counts, conventions, SHA-256 verification, download and cache."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from morphable import landmarks, shape
from morphable.io import ict
from morphable.io.ict import ICT_COMMIT, load_ict, read_obj

# From the ICT-FaceKit README ("Multi-PIE 68 point facial landmarks indices").
README_LANDMARKS_HEAD = (1225, 1888, 1052, 367, 1719, 1722, 2199, 1447, 966, 3661)


def test_ict_counts_and_conventions(ict_model):
    m = ict_model
    assert (m.n_vertices, m.n_identity, m.n_expression) == (26719, 100, 53)
    assert len(m.landmark_indices) == 68 and min(m.landmark_indices) >= 0
    assert m.landmark_indices[:10] == README_LANDMARKS_HEAD
    assert m.expression_kind == "blendshape" and m.units == "cm"
    assert m.expression_names[0] == "browDown_L" and "jawOpen" in m.expression_names
    assert np.all(np.asarray(m.expression_lower) == 0) and np.all(np.asarray(m.expression_upper) == 1)
    assert len(m.contour_right) == 17 and len(m.contour_left) == 17
    # 26,384 polygons, mostly quads, triangulated.
    assert 26384 < len(m.triangles) <= 2 * 26384
    # A face about 25 cm wide, symmetric about x = 0.
    mean = np.asarray(m.mean)
    assert 20 < mean[:, 0].max() - mean[:, 0].min() < 30
    assert abs(mean[:, 0].max() + mean[:, 0].min()) < 1e-3


def test_ict_modes_match_obj_files(ict_model, shared_data):
    """identity k and expression jawOpen reproduce their OBJ meshes exactly."""
    archive = next((shared_data / "ict-facekit").glob("*.tar.xz"))
    wanted = {"generic_neutral_mesh.obj", "identity007.obj", "jawOpen.obj"}
    meshes = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            base = Path(member.name).name
            if base in wanted:
                meshes[base] = read_obj(tar.extractfile(member).read())
    m = ict_model
    identity = np.zeros(100, np.float32)
    identity[7] = 1.0
    expression = np.zeros(53, np.float32)
    expression[m.expression_names.index("jawOpen")] = 1.0
    np.testing.assert_allclose(shape(m, np.zeros(100), np.zeros(53)), meshes["generic_neutral_mesh.obj"], atol=1e-5)
    np.testing.assert_allclose(shape(m, identity, np.zeros(53)), meshes["identity007.obj"], atol=1e-4)
    np.testing.assert_allclose(shape(m, np.zeros(100), expression), meshes["jawOpen.obj"], atol=1e-4)


def test_regions_keep_landmarks(ict_model, ict_cache):
    face = load_ict(cache_dir=ict_cache, region="face")
    narrow = load_ict(cache_dir=ict_cache, region="narrow_face")
    assert face.n_vertices == 9409 and narrow.n_vertices == 6706
    rng = np.random.default_rng(0)
    i, e = rng.normal(size=100), rng.uniform(size=53)
    for sub in (face, narrow):
        np.testing.assert_allclose(landmarks(sub, i, e), landmarks(ict_model, i, e), atol=1e-5)
        assert sub.triangles.max() < sub.n_vertices


def test_cache_is_used_and_rebuilt_when_damaged(ict_model, ict_cache):
    cached = ict.ict_cache_path(ict_cache)
    assert cached.is_file()
    # A cache hit does not need any source: point the data folder nowhere and forbid downloads.
    again = load_ict(cache_dir=ict_cache, download=False)
    np.testing.assert_array_equal(np.asarray(again.identity_basis), np.asarray(ict_model.identity_basis))


def test_missing_source_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPEXP3D_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="ICT-FaceKit not found"):
        load_ict(cache_dir=tmp_path / "cache", download=False)


def test_bad_region():
    with pytest.raises(ValueError, match="region"):
        load_ict(region="ears")


def _tampered_archive(path: Path) -> Path:
    """A tar in the repository's layout whose vertex_indices.json differs from the pinned commit."""
    with tarfile.open(path, "w:gz") as tar:
        payload = b'{"expressions": [], "idx_to_landmark_verts": []}'
        info = tarfile.TarInfo(f"ICT-FaceKit-{ICT_COMMIT}/FaceXModel/vertex_indices.json")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return path


def test_tampered_archive_is_rejected_and_leaves_no_cache(tmp_path):
    archive = _tampered_archive(tmp_path / "fake.tar.gz")
    with pytest.raises(ValueError, match="SHA-256"):
        load_ict(archive, cache_dir=tmp_path / "cache")
    assert not ict.ict_cache_path(tmp_path / "cache").exists()


def test_failed_download_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPEXP3D_DATA", str(tmp_path / "nowhere"))

    class Broken:
        headers = {"Content-Length": "100"}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, size=-1):
            raise ConnectionResetError("connection lost mid-download")

    with pytest.raises(ConnectionResetError):
        load_ict(cache_dir=tmp_path / "cache", opener=lambda url: Broken())
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert leftovers == []


@pytest.mark.slow
def test_download_path_with_local_url(tmp_path, monkeypatch, shared_data):
    """The download branch end to end, served from a local file:// URL (no network here)."""
    monkeypatch.setenv("DEEPEXP3D_DATA", str(tmp_path / "nowhere"))
    archive = next((shared_data / "ict-facekit").glob("*.tar.xz"))
    model = load_ict(cache_dir=tmp_path / "cache", url=archive.resolve().as_uri())
    assert (model.n_identity, model.n_expression) == (100, 53)
    assert ict.ict_cache_path(tmp_path / "cache").is_file()
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_read_obj_triangulates_quads():
    vertices, triangles = read_obj(b"v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nf 1/1 2/1 3/1 4/1\nf 1 2 3\n", with_faces=True)
    assert vertices.shape == (4, 3)
    assert triangles.tolist() == [[0, 1, 2], [0, 2, 3], [0, 1, 2]]
    with pytest.raises(ValueError, match="malformed"):
        read_obj(b"v 0 0\n")
