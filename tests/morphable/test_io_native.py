"""Native .npz model files and mesh export."""

from __future__ import annotations

import numpy as np
import pytest

from morphable.io import export_mesh, load_model, save_model
from morphable.model import make_model


def _model():
    rng = np.random.default_rng(1)
    return make_model(
        rng.normal(size=(5, 3)),
        rng.normal(size=(5, 3, 3)),
        rng.normal(size=(5, 3, 2)),
        triangles=[[0, 1, 2], [2, 3, 4]],
        landmark_indices=[4, -1, 0],
        identity_std=[3.0, 2.0, 1.0],
        expression_kind="blendshape",
        expression_names=("smile", "frown"),
        contour_right=[1, 2],
        contour_left=[3],
        units="mm",
        name="toy",
    )


def test_round_trip_is_exact(tmp_path):
    m = _model()
    back = load_model(save_model(m, tmp_path / "m.npz"))
    for field in ("mean", "identity_basis", "identity_std", "expression_basis", "expression_std",
                  "expression_lower", "expression_upper"):
        np.testing.assert_array_equal(np.asarray(getattr(back, field)), np.asarray(getattr(m, field)))
    np.testing.assert_array_equal(back.triangles, m.triangles)
    for field in ("landmark_indices", "contour_right", "contour_left", "expression_names",
                  "expression_kind", "units", "name"):
        assert getattr(back, field) == getattr(m, field)
    assert back.topology == m.topology


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_model(tmp_path / "missing.npz")
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="text.npz"):
        load_model(text)
    full = save_model(_model(), tmp_path / "m.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.npz"):
        load_model(truncated)
    other = tmp_path / "other.npz"
    np.savez(other, mean=np.zeros(3))
    with pytest.raises(ValueError, match="not a deepexp3d model"):
        load_model(other)


def test_export_obj_and_ply(tmp_path):
    import trimesh

    m = _model()
    vertices = np.asarray(m.mean)
    for suffix in ("obj", "ply"):
        path = export_mesh(vertices, m.triangles, tmp_path / f"mesh.{suffix}")
        back = trimesh.load(path, process=False, force="mesh")
        np.testing.assert_allclose(back.vertices, vertices, atol=1e-6)
        np.testing.assert_array_equal(back.faces, m.triangles)
    with pytest.raises(ValueError, match="triangles"):
        export_mesh(vertices, [[0, 1, 9]], tmp_path / "bad.obj")
    with pytest.raises(ValueError, match="vertices"):
        export_mesh(np.full((3, 3), np.nan), [[0, 1, 2]], tmp_path / "nan.obj")
