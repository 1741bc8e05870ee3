"""Model editing: bases, restriction, PCA from meshes, the orthonormal expression basis."""

from __future__ import annotations

import numpy as np
import pytest

from morphable import landmarks, make_model, shape
from morphable.editing import (
    append_expression_basis,
    append_identity_basis,
    orthonormal_expression_basis,
    pca_model_from_meshes,
    replace_expression_basis,
    replace_identity_basis,
    restrict,
)


def _toy(rng, n=12, n_i=3, n_e=5, kind="blendshape"):
    return make_model(
        rng.normal(size=(n, 3)),
        rng.normal(size=(n, 3, n_i)),
        rng.normal(size=(n, 3, n_e)),
        triangles=[[0, 1, 2], [2, 3, 4], [5, 6, 7]],
        landmark_indices=[2, 5, -1],
        contour_right=[1, 7],
        contour_left=[9],
        expression_kind=kind,
    )


def test_append_and_replace_bases():
    rng = np.random.default_rng(0)
    m = _toy(rng)
    extra = rng.normal(size=(12, 3, 2))
    m2 = append_expression_basis(m, extra, names=("a", "b"))
    assert m2.n_expression == 7 and m2.expression_names[-2:] == ("a", "b")
    e = rng.uniform(size=7)
    expected = shape(m, np.zeros(3), e[:5]) + np.einsum("nck,k->nc", extra, e[5:])
    np.testing.assert_allclose(shape(m2, np.zeros(3), e), expected, atol=1e-5)
    m3 = replace_expression_basis(m, extra, std=[2.0, 0.5])
    np.testing.assert_allclose(
        shape(m3, np.zeros(3), [1.0, 1.0]) - np.asarray(m.mean), extra[:, :, 0] * 2 + extra[:, :, 1] * 0.5, atol=1e-5
    )
    m4 = append_identity_basis(m, extra, std=[3.0, 1.0])
    assert m4.n_identity == 5
    m5 = replace_identity_basis(m, extra.reshape(36, 2))
    assert m5.n_identity == 2
    with pytest.raises(ValueError, match="basis"):
        append_expression_basis(m, np.zeros((11, 3, 1)))


def test_restrict_remaps_everything():
    rng = np.random.default_rng(1)
    m = _toy(rng)
    keep = np.array([7, 6, 5, 2, 3, 4, 1, 0])
    r = restrict(m, keep)
    i, e = rng.normal(size=3), rng.uniform(size=5)
    np.testing.assert_allclose(shape(r, i, e), np.asarray(shape(m, i, e))[keep], atol=1e-6)
    np.testing.assert_allclose(landmarks(r, i, e)[:2], landmarks(m, i, e)[:2], atol=1e-6)
    assert r.landmark_indices[2] == -1
    # Every triangle lies inside the kept set here, so the same 3D triangles remain.
    full = np.asarray(shape(m, i, e))[m.triangles]
    sub = np.asarray(shape(r, i, e))[r.triangles]
    np.testing.assert_allclose(np.sort(sub.reshape(len(sub), -1), 0), np.sort(full.reshape(len(full), -1), 0), atol=1e-6)
    assert r.contour_right == (6, 0) and r.contour_left == ()
    with pytest.raises(ValueError, match="landmark"):
        restrict(m, [0, 1, 3])
    with pytest.raises(ValueError, match="repeated"):
        restrict(m, [2, 2, 5])
    with pytest.raises(ValueError, match="within"):
        restrict(m, [2, 5, 99])


def test_pca_from_meshes_recovers_subspace():
    rng = np.random.default_rng(2)
    n, k, count = 30, 4, 200
    mean = rng.normal(size=(n, 3))
    directions = np.linalg.qr(rng.normal(size=(3 * n, k)))[0]
    stds = np.array([5.0, 3.0, 2.0, 1.0])
    coeffs = rng.normal(size=(count, k)) * stds
    meshes = mean + (coeffs @ directions.T).reshape(count, n, 3)
    m = pca_model_from_meshes(meshes, k, triangles=[[0, 1, 2]], landmark_indices=[0])
    basis = np.asarray(m.identity_basis).reshape(3 * n, k)
    np.testing.assert_allclose(basis.T @ basis, np.eye(k), atol=1e-5)
    # Same subspace as the generating one, stds near the generating ones.
    np.testing.assert_allclose(np.linalg.svd(directions.T @ basis)[1], np.ones(k), atol=1e-5)
    np.testing.assert_allclose(np.asarray(m.identity_std), stds, rtol=0.15)
    # Reconstruction of a training mesh from its std-unit coefficients.
    c = basis.T @ (meshes[0] - meshes.mean(0)).reshape(-1) / np.asarray(m.identity_std)
    np.testing.assert_allclose(shape(m, c, np.zeros(0)), meshes[0], atol=1e-4)
    with pytest.raises(ValueError, match="n_components"):
        pca_model_from_meshes(meshes[:3], 5, triangles=[[0, 1, 2]], landmark_indices=[0])


def test_orthonormal_basis_mapping_on_toy():
    rng = np.random.default_rng(3)
    m = _toy(rng, n_e=6)
    new, mapping = orthonormal_expression_basis(m, 4)
    basis = np.asarray(new.expression_basis).reshape(-1, 4)
    np.testing.assert_allclose(basis.T @ basis, np.eye(4), atol=1e-5)
    np.testing.assert_allclose(mapping.to_orthonormal @ mapping.to_blendshape, np.eye(4), atol=1e-5)
    w = rng.uniform(size=6)
    offset = (shape(m, np.zeros(3), w) - m.mean).reshape(-1)
    e = mapping.to_orthonormal @ w
    new_offset = np.asarray(shape(new, np.zeros(3), e) - new.mean).reshape(-1)
    # The new coefficients give the orthogonal projection of the blendshape offset.
    np.testing.assert_allclose(new_offset, basis @ (basis.T @ offset), atol=1e-4)
    # And the blendshape weights from e reproduce e's shape exactly.
    back = np.asarray(shape(m, np.zeros(3), mapping.to_blendshape @ e) - m.mean).reshape(-1)
    np.testing.assert_allclose(back, new_offset, atol=1e-4)
    full, mapping_full = orthonormal_expression_basis(m, 6)
    assert mapping_full.residual < 1e-6


def test_ict_28_dimensional_orthonormal_basis(ict_face_model):
    """The paper's n_e = 28 orthonormal basis from ICT's 53 blendshapes, on the face area."""
    m = ict_face_model
    new, mapping = orthonormal_expression_basis(m, 28)
    assert new.n_expression == 28 and new.expression_kind == "pca"
    basis = np.asarray(new.expression_basis, dtype=np.float64).reshape(-1, 28)
    np.testing.assert_allclose(basis.T @ basis, np.eye(28), atol=1e-4)
    # Stated residual: 28 of 53 components keep all but ~13 % (Frobenius) of the blendshape energy.
    assert mapping.residual < 0.15
    singular = mapping.singular_values.astype(np.float64)
    assert mapping.residual == pytest.approx(np.sqrt((singular[28:] ** 2).sum() / (singular**2).sum()), rel=1e-4)
    # Mapping agrees with a direct least-squares projection for a random expression.
    rng = np.random.default_rng(4)
    w = rng.uniform(size=53).astype(np.float32)
    offset = np.asarray(shape(m, np.zeros(100), w) - m.mean, dtype=np.float64).reshape(-1)
    e_direct = np.linalg.lstsq(basis * np.asarray(new.expression_std), offset, rcond=None)[0]
    np.testing.assert_allclose(mapping.to_orthonormal @ w, e_direct, atol=2e-3)
