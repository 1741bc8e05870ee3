"""Tests of the single-image landmark fitter and the contour correspondences.

Compilation dominates the run time on the 2-core CI machine, so the tests batch
their cases: each (model, batch size, configuration) is compiled once.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import morphable
from fitting.config import ImageFitConfig
from fitting.contour import contour_correspondences
from fitting.image import fit_image
from fitting.pts import read_pts

NOISE_PX = 1.0


def _all_finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(leaf)))) for leaf in jax.tree_util.tree_leaves(tree))


@pytest.fixture(scope="module")
def tiny_model():
    """68 landmark vertices of a face-sized point cloud, 8 identity and 4 blendshape components."""
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(90, 3)) * np.array([50.0, 60.0, 20.0])
    return morphable.make_model(
        mean,
        rng.normal(size=(90, 3, 8)) * 4.0,
        rng.normal(size=(90, 3, 4)) * 6.0,
        triangles=[[0, 1, 2]],
        landmark_indices=np.arange(68),
        expression_kind="blendshape",
        units="mm",
        name="tiny",
    )


@pytest.fixture(scope="module")
def sfm_model(shared_data):
    if not (shared_data / "eos-sfm" / "sfm_shape_3448.bin").is_file():
        pytest.skip(f"SFM model not found in {shared_data / 'eos-sfm'}")
    from morphable.io import load_sfm

    return load_sfm(shared_data / "eos-sfm")


def _vertices(model, identity, expression, vertex_indices=None):
    """NumPy oracle of ``morphable.shape`` / ``vertices_at`` (no per-primitive compilation in tests)."""
    idx = slice(None) if vertex_indices is None else np.asarray(vertex_indices)
    identity = np.asarray(identity) * np.asarray(model.identity_std)
    expression = np.asarray(expression) * np.asarray(model.expression_std)
    return (
        np.asarray(model.mean)[idx]
        + np.einsum("kcn,...n->...kc", np.asarray(model.identity_basis)[idx], identity)
        + np.einsum("kcn,...n->...kc", np.asarray(model.expression_basis)[idx], expression)
    )


def _landmarks3d(model, identity, expression):
    return _vertices(model, identity, expression, np.maximum(np.asarray(model.landmark_indices), 0))


def _matrices(yaw_pitch_roll_degrees):
    """R = R_y(yaw) R_x(pitch) R_z(roll), the convention of morphable.rotation."""
    return Rotation.from_euler("YXZ", yaw_pitch_roll_degrees, degrees=True).as_matrix()


def _angles(axis_angle):
    return Rotation.from_rotvec(np.asarray(axis_angle, np.float64)).as_euler("YXZ", degrees=True)


def _project(camera, points3d):
    """NumPy oracle of ``morphable.project`` for batched cameras ``(B,)`` and points ``(B, P, 3)``."""
    matrices = Rotation.from_rotvec(np.asarray(camera.rotation, np.float64)).as_matrix()
    rotated = np.einsum("bij,bpj->bpi", matrices, points3d)
    if isinstance(camera, morphable.PerspectiveCamera):
        rotated = rotated + np.asarray(camera.translation)[:, None, :]
        focal = np.asarray(camera.focal)[:, None, None]
        image_plane = rotated[..., :2] / -rotated[..., 2:] * [1, -1]
        return np.asarray(camera.principal_point)[:, None, :] + focal * image_plane
    scale = np.asarray(camera.scale)[:, None, None]
    return scale * rotated[..., :2] * [1, -1] + np.asarray(camera.translation)[:, None, :]


def _synthetic_images(model, rng, batch, *, perspective=False, max_yaw=30.0, eye_distance_px=150.0):
    """Landmarks of random faces (identity 0.5·N(0, 1), sparse blendshapes), random poses, 1 px noise."""
    identity = (0.5 * rng.normal(size=(batch, model.n_identity))).astype(np.float32)
    expression = rng.uniform(0.0, 0.6, size=(batch, model.n_expression))
    expression = (expression * (rng.uniform(size=(batch, model.n_expression)) < 0.3)).astype(np.float32)
    yaw_pitch_roll = rng.uniform([-max_yaw, -10, -10], [max_yaw, 10, 10], size=(batch, 3))
    rotation = Rotation.from_matrix(_matrices(yaw_pitch_roll)).as_rotvec().astype(np.float32)
    points3d = _landmarks3d(model, identity, expression)
    eyes = float(np.linalg.norm(points3d[0, 36] - points3d[0, 45]))
    if perspective:
        focal = 1000.0
        camera = morphable.PerspectiveCamera(
            rotation=rotation,
            translation=np.tile(np.array([10.0, -5.0, -focal * eyes / eye_distance_px], np.float32), (batch, 1)),
            focal=np.full(batch, focal, np.float32),
            principal_point=np.tile(np.array([320.0, 240.0], np.float32), (batch, 1)),
        )
    else:
        camera = morphable.WeakPerspectiveCamera(
            rotation=rotation,
            scale=np.full(batch, eye_distance_px / eyes, np.float32),
            translation=np.tile(np.array([320.0, 240.0], np.float32), (batch, 1)),
        )
    clean = _project(camera, points3d).astype(np.float32)
    noisy = clean + NOISE_PX * rng.normal(size=clean.shape).astype(np.float32)
    noisy[:, ~morphable.landmark_mask(model)] = np.nan
    return noisy, clean, identity, expression, yaw_pitch_roll


def _fitted_landmarks2d(model, result):
    return _project(result.camera, _landmarks3d(model, np.asarray(result.identity), np.asarray(result.expression)))


# ---------------------------------------------------------------- argument checks


def test_rejects_bad_arguments_with_named_errors(tiny_model):
    y = np.zeros((68, 2), np.float32)
    with pytest.raises(ValueError, match="landmarks2d"):
        fit_image(tiny_model, np.zeros((67, 2)))
    with pytest.raises(ValueError, match="landmarks2d"):
        fit_image(tiny_model, np.zeros((68, 3)))
    with pytest.raises(ValueError, match="landmarks2d"):
        fit_image(tiny_model, np.full((68, 2), "a"))
    with pytest.raises(ValueError, match="landmarks2d"):
        fit_image(tiny_model, np.zeros((0, 68, 2)))
    with pytest.raises(ValueError, match="weights"):
        fit_image(tiny_model, y, weights=np.ones(5))
    with pytest.raises(ValueError, match="weights"):
        fit_image(tiny_model, y, weights=-np.ones(68))
    with pytest.raises(ValueError, match="weights"):
        fit_image(tiny_model, y, weights=np.full(68, np.nan))
    with pytest.raises(ValueError, match="principal_point"):
        fit_image(tiny_model, y, principal_point=np.zeros(3))
    with pytest.raises(ValueError, match="huber_scale"):
        fit_image(tiny_model, y, config=ImageFitConfig(huber_scale=0.0))
    with pytest.raises(ValueError, match="camera"):
        fit_image(tiny_model, y, config=ImageFitConfig(camera="fisheye"))
    with pytest.raises(ValueError, match="config"):
        fit_image(tiny_model, y, config={"landmark_weight": 1.0})
    fewer = dataclasses.replace(tiny_model, landmark_indices=tuple(range(5)))
    with pytest.raises(ValueError, match="model"):
        fit_image(fewer, y)


# ---------------------------------------------------------------- missing data, batching, robust loss


def test_missing_landmarks_and_degenerate_images(tiny_model):
    rng = np.random.default_rng(1)
    _, clean, _, _, _ = _synthetic_images(tiny_model, rng, 1, max_yaw=20.0)
    noisy = clean[0] + NOISE_PX * rng.normal(size=(68, 2)).astype(np.float32)
    missing = rng.choice(68, size=10, replace=False)
    images = np.repeat(noisy[None], 6, axis=0)
    weights = np.ones((6, 68), np.float32)
    images[1, missing] = np.nan  # 10 NaN landmarks
    weights[2, missing] = 0.0  # the same landmarks switched off by weight
    images[3] = np.nan  # nothing at all
    images[4, 4:] = np.nan  # 4 landmarks: too few for a valid fit
    images[5] = 100.0 + np.linspace(0, 1, 68)[:, None] * np.array([[200.0, 50.0]])  # collinear
    result = fit_image(tiny_model, images, weights=weights)

    assert _all_finite(result)
    np.testing.assert_array_equal(np.asarray(result.valid), [True, True, True, False, False, False])
    assert int(result.used[1].sum()) == 58 and not bool(result.used[1, missing].any())
    # The fits without 10 landmarks still predict all 68 (the missing ones too)
    # within about the noise level.
    projected = _fitted_landmarks2d(tiny_model, result)
    for k in (0, 1, 2):
        assert np.sqrt(np.mean(np.sum((projected[k] - clean[0]) ** 2, -1))) < 2.0 * NOISE_PX
        assert float(result.rmse[k]) < 2.0 * NOISE_PX
    # NaN and zero weight are the same thing.
    np.testing.assert_allclose(result.identity[1], result.identity[2], atol=1e-3)
    np.testing.assert_allclose(result.expression[1], result.expression[2], atol=1e-3)
    # Invalid images report the neutral fallback (zero identity) and never claim convergence.
    np.testing.assert_array_equal(np.asarray(result.identity[3:]), 0.0)
    assert not bool(result.converged[3:].any())
    expression = np.asarray(result.expression)
    assert np.all(expression >= 0.0) and np.all(expression <= 1.0)  # the blendshape bounds


def test_batch_dims_match_single_image_fits(tiny_model):
    rng = np.random.default_rng(2)
    images, _, _, _, _ = _synthetic_images(tiny_model, rng, 6)
    batched = fit_image(tiny_model, images.reshape(2, 3, 68, 2))
    assert batched.identity.shape == (2, 3, tiny_model.n_identity)
    assert batched.camera.rotation.shape == (2, 3, 3) and batched.residuals.shape == (2, 3, 68, 2)
    single = fit_image(tiny_model, images[4])
    assert single.identity.shape == (tiny_model.n_identity,) and single.rmse.shape == ()
    np.testing.assert_allclose(single.identity, batched.identity[1, 1], atol=1e-3)
    np.testing.assert_allclose(single.camera.scale, batched.camera.scale[1, 1], rtol=1e-4)
    np.testing.assert_allclose(single.rmse, batched.rmse[1, 1], rtol=1e-3)


def test_huber_loss_resists_outliers(tiny_model):
    rng = np.random.default_rng(3)
    images, clean, _, _, _ = _synthetic_images(tiny_model, rng, 6)
    outliers = rng.choice(68, size=(6, 6), replace=True)
    for k in range(6):
        images[k, outliers[k]] += rng.choice([-1.0, 1.0], size=(6, 2)) * 40.0
    inlier = np.ones((6, 68), bool)
    np.put_along_axis(inlier, outliers, False, axis=1)

    def inlier_error(result):
        distance = np.linalg.norm(_fitted_landmarks2d(tiny_model, result) - clean, axis=-1)
        return np.sqrt(np.mean(distance[inlier] ** 2))

    plain = inlier_error(fit_image(tiny_model, images))
    huber = ImageFitConfig(robust_loss="huber", huber_scale=3.0)
    robust = inlier_error(fit_image(tiny_model, images, config=huber))
    assert robust < 0.6 * plain, (robust, plain)
    assert robust < 2.0 * NOISE_PX


# ---------------------------------------------------------------- recovery on the real models


def test_synthetic_recovery_ict(ict_model):
    """Known identity, expression and pose on ICT-FaceKit (3D-aware landmarks, 1 px noise).

    Tolerances (measured values in brackets): with 1 px noise per coordinate the 2D
    point RMSE of a fit with p effective parameters is about √2·√(1 − p/136), so the
    mean must be below 1.5 px and no image above 2 px [1.30, 1.46]. Individual
    identity coefficients are barely observable from 68 points (faces differing in
    depth project alike), so the test compares 3D landmark geometry: the recovered
    offset from the mean face (identity + expression) must be within 60 % of its size,
    where the mean face scores 100 % [43 %], and the expression part alone within
    60 % [31 %]; the 53 overlapping ARKit blendshapes are only partly separable from
    68 points, so the coefficients need only correlate with the truth, r > 0.5 [0.71].
    Pose within 2° per angle on average [0.5°]; scale within 8 % per image and 3 % on
    average [5.5 %, 1.5 %]: the identity prior shrinks the face's size, which the
    scale absorbs.
    """
    rng = np.random.default_rng(4)
    images, _, identity, expression, yaw_pitch_roll = _synthetic_images(ict_model, rng, 16)
    # ICT's jawline landmarks are fixed vertices ("3D-aware", as the paper's detector).
    result = fit_image(ict_model, images, config=ImageFitConfig(contour_fitting=False))
    assert bool(np.all(result.valid)) and bool(np.all(result.converged))
    rmse = np.asarray(result.rmse)
    assert rmse.mean() < 1.5 and rmse.max() < 2.0, rmse

    zeros_i, zeros_e = np.zeros_like(identity), np.zeros_like(expression)
    mean_face = _landmarks3d(ict_model, zeros_i, zeros_e)

    def relative_error(fitted, truth):
        return np.sqrt(np.sum((fitted - truth) ** 2, axis=(1, 2)) / np.sum(truth**2, axis=(1, 2)))

    offset_true = _landmarks3d(ict_model, identity, expression) - mean_face
    offset_fit = _landmarks3d(ict_model, np.asarray(result.identity), np.asarray(result.expression)) - mean_face
    assert relative_error(offset_fit, offset_true).mean() < 0.6
    expression_true = _landmarks3d(ict_model, zeros_i, expression) - mean_face
    expression_fit = _landmarks3d(ict_model, zeros_i, np.asarray(result.expression)) - mean_face
    assert relative_error(expression_fit, expression_true).mean() < 0.6
    assert np.corrcoef(np.asarray(result.expression).ravel(), expression.ravel())[0, 1] > 0.5

    angles = _angles(result.camera.rotation)
    assert np.abs(angles - yaw_pitch_roll).mean(axis=0).max() < 2.0
    eyes = np.linalg.norm(mean_face[0, 36] - mean_face[0, 45])
    scale_ratio = np.asarray(result.camera.scale) * eyes / 150.0
    assert np.abs(scale_ratio - 1.0).max() < 0.08 and abs(scale_ratio.mean() - 1.0) < 0.03


def test_perspective_camera_fits_perspective_data(sfm_model):
    """Faces 60 cm from a 1000 px camera: strong perspective (depth ±10 % of the distance)."""
    rng = np.random.default_rng(5)
    images, _, _, _, yaw_pitch_roll = _synthetic_images(sfm_model, rng, 8, perspective=True)
    images[7] = np.nan  # an image without landmarks: flagged, finite fallback camera
    principal_point = np.array([320.0, 240.0], np.float32)
    config = ImageFitConfig(contour_fitting=False, camera="perspective", focal_length=1000.0)
    pinhole = fit_image(sfm_model, images, principal_point=principal_point, config=config)
    assert isinstance(pinhole.camera, morphable.PerspectiveCamera)
    assert _all_finite(pinhole)
    np.testing.assert_array_equal(np.asarray(pinhole.valid), [True] * 7 + [False])
    pinhole, yaw_pitch_roll = jax.tree_util.tree_map(lambda leaf: leaf[:7], pinhole), yaw_pitch_roll[:7]
    assert bool(np.all(pinhole.converged))
    # At the noise level [1.40 px mean]; a weak-perspective fit of the same images
    # stays above it [1.53 px], and has no distance to check below.
    assert float(pinhole.rmse.mean()) < 1.5 and float(pinhole.rmse.max()) < 2.0
    distance = -np.asarray(pinhole.camera.translation[:, 2])
    mean_face = _landmarks3d(sfm_model, np.zeros(63), np.zeros(6))
    # The generating camera put the model origin at 1000 px · eyes / 150 px (≈ 616 mm).
    expected = 1000.0 * np.linalg.norm(mean_face[36] - mean_face[45]) / 150.0
    np.testing.assert_allclose(distance, expected, rtol=0.1)
    angles = _angles(pinhole.camera.rotation)
    assert np.abs(angles - yaw_pitch_roll).mean(axis=0).max() < 2.0


# ---------------------------------------------------------------- contour correspondences


def test_contour_correspondences_pick_the_nearest_candidate_on_the_visible_side(sfm_model):
    right, left = np.asarray(sfm_model.contour_right), np.asarray(sfm_model.contour_left)
    identity, expression = np.zeros(sfm_model.n_identity, np.float32), np.zeros(sfm_model.n_expression, np.float32)
    vertices = np.asarray(sfm_model.mean)
    results = {}
    for yaw in (-30.0, 0.0, 30.0):
        camera = morphable.WeakPerspectiveCamera(
            rotation=Rotation.from_euler("YXZ", [yaw, 0.0, 0.0], degrees=True).as_rotvec().astype(np.float32),
            scale=np.float32(2.0),
            translation=np.array([300.0, 300.0], np.float32),
        )
        batched = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf)[None], camera)
        projected = _project(batched, vertices[None])[0]
        landmarks2d = np.full((68, 2), 300.0, np.float32)
        # Put each contour landmark 0.2 px from a known candidate.
        chosen_right, chosen_left = right[[0, 2, 4, 6, 8, 10, 12, 14]], left[[1, 3, 5, 7, 9, 11, 13, 15]]
        landmarks2d[0:8] = projected[chosen_right] + 0.2
        landmarks2d[9:17] = projected[chosen_left] - 0.2
        results[yaw] = np.asarray(
            contour_correspondences(sfm_model, camera, identity, expression, landmarks2d, frontal_yaw_degrees=10.0)
        )
        assert results[yaw][8] == sfm_model.landmark_indices[8]  # the chin keeps its vertex
        np.testing.assert_array_equal(results[yaw][17:], np.asarray(sfm_model.landmark_indices[17:]))
    # Frontal: both sides; turned to the subject's left (yaw > 0): only the right side, as eos.
    np.testing.assert_array_equal(results[0.0][0:8], chosen_right)
    np.testing.assert_array_equal(results[0.0][9:17], chosen_left)
    np.testing.assert_array_equal(results[30.0][0:8], chosen_right)
    assert np.all(results[30.0][9:17] == -1)
    np.testing.assert_array_equal(results[-30.0][9:17], chosen_left)
    assert np.all(results[-30.0][0:8] == -1)


# ---------------------------------------------------------------- side by side with eos-py


def _eos_reference(directory: Path):
    eos = pytest.importorskip("eos")
    shape_model = eos.morphablemodel.load_model(str(directory / "sfm_shape_3448.bin"))
    blendshapes = eos.morphablemodel.load_blendshapes(str(directory / "expression_blendshapes_3448.bin"))
    model = eos.morphablemodel.MorphableModel(
        shape_model.get_shape_model(),
        blendshapes,
        color_model=eos.morphablemodel.PcaModel(),
        vertex_definitions=None,
        texture_coordinates=shape_model.get_texture_coordinates(),
    )
    mapping = str(directory / "ibug_to_sfm.txt")
    edge_topology = eos.morphablemodel.load_edge_topology(str(directory / "sfm_3448_edge_topology.json"))
    contour_landmarks = eos.fitting.ContourLandmarks.load(mapping)
    model_contour = eos.fitting.ModelContour.load(str(directory / "sfm_model_contours.json"))
    mapper = eos.core.LandmarkMapper(mapping)

    def fit(landmarks2d, width, height):
        """eos's fit_shape_and_pose with contour and edge fitting (defaults), as the eos-sfm README."""
        landmarks = [eos.core.Landmark(str(k + 1), [float(x), float(y)]) for k, (x, y) in enumerate(landmarks2d)]
        mesh, pose, _, _ = eos.fitting.fit_shape_and_pose(
            model, landmarks, mapper, width, height, edge_topology, contour_landmarks, model_contour
        )
        affine = np.asarray(eos.fitting.get_3x4_affine_camera_matrix(pose, width, height))
        return np.asarray(mesh.vertices) @ affine[:2, :3].T + affine[:2, 3]

    return fit


def _landmark_errors(model, projected, landmarks2d):
    """RMSE (px) over the 50 mapped landmarks, and over those plus the 16 contour landmarks
    measured to the nearest projected contour candidate of their side (as the eos-sfm README)."""
    fixed = np.asarray(model.landmark_indices)
    mapped = fixed >= 0
    squared = np.sum((projected[fixed[mapped]] - landmarks2d[mapped]) ** 2, -1)
    contour = []
    for ids, candidates in ((range(0, 8), model.contour_right), (range(9, 17), model.contour_left)):
        for k in ids:
            contour.append(np.min(np.sum((projected[np.asarray(candidates)] - landmarks2d[k]) ** 2, -1)))
    with_contour = np.sqrt((squared.sum() + np.sum(contour)) / (squared.size + len(contour)))
    return np.sqrt(squared.mean()), with_contour


def test_no_worse_than_eos_on_real_landmarks(sfm_model, shared_data):
    """20 LFPW training faces + eos's own example, SFM with 6 blendshapes, contour fitting on.

    eos: ``fit_shape_and_pose`` with contour and occluding-edge fitting, 5 iterations,
    λ_identity = 30 (its defaults, as the eos-sfm README). Ours: the default
    configuration. Both are scored by the same code on the same landmarks; ours must
    have the lower mean error on the 50 mapped landmarks and on those plus the contour.
    """
    folder = shared_data / "landmark-images" / "lfpw-train"
    files = sorted(folder.glob("*.pts"))[:20]
    if len(files) < 20:
        pytest.skip(f"fewer than 20 .pts files in {folder}")
    with open(shared_data / "landmark-images" / "index.csv") as handle:
        image_sizes = {row["pts"]: (int(row["width"]), int(row["height"])) for row in csv.DictReader(handle)}
    sizes = [image_sizes[path.name] for path in files]
    files.append(shared_data / "eos-sfm" / "examples" / "image_0010.pts")
    sizes.append((1280, 1024))
    landmarks2d = np.stack([read_pts(path) for path in files])
    eos_fit = _eos_reference(shared_data / "eos-sfm")

    result = fit_image(sfm_model, landmarks2d)
    # Convergence within the default iteration budget is not required here (two of
    # 21 real faces stop at the budget); the claim is the reprojection error vs eos.
    assert bool(np.all(result.valid))
    projected = _project(result.camera, _vertices(sfm_model, result.identity, result.expression))
    ours = np.array([_landmark_errors(sfm_model, p, y) for p, y in zip(projected, landmarks2d)])
    theirs = np.array(
        [_landmark_errors(sfm_model, eos_fit(y, w, h), y) for y, (w, h) in zip(landmarks2d, sizes)]
    )
    assert ours[:, 0].mean() <= theirs[:, 0].mean(), (ours.mean(0), theirs.mean(0))
    assert ours[:, 1].mean() <= theirs[:, 1].mean(), (ours.mean(0), theirs.mean(0))
    # eos's example (its README: 7.10 px on the 50 mapped points with 1-based coordinates).
    assert ours[-1, 0] <= theirs[-1, 0], (ours[-1], theirs[-1])
