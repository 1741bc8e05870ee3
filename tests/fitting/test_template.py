"""Template alignment: the template, the least-squares similarity, the warp and the camera transfer."""

from __future__ import annotations

import cv2
import jax.numpy as jnp
import numpy as np
import pytest

from fitting.template import (
    Template,
    align_face,
    compose_similarity,
    invert_similarity,
    make_template,
    similarity_to_template,
    transform_points,
    warp_camera,
)
from morphable.camera import WeakPerspectiveCamera, project
from morphable.model import landmarks


def _similarity(scale: float, degrees: float, tx: float, ty: float) -> np.ndarray:
    a, b = scale * np.cos(np.deg2rad(degrees)), scale * np.sin(np.deg2rad(degrees))
    return np.array([[a, -b, tx], [b, a, ty]])


def _random_template(seed: int = 0) -> Template:
    return Template(points=np.random.default_rng(seed).uniform(40, 184, (68, 2)), weights=np.ones(68))


def test_template_is_the_frontal_mean_face_filling_the_crop(ict_face_model):
    template = make_template(ict_face_model, size=224, margin=0.15, vertical_offset=0.05)
    mean_points = np.asarray(landmarks(ict_face_model, np.zeros(100), np.zeros(53)), np.float64)
    frontal = np.stack([mean_points[:, 0], -mean_points[:, 1]], axis=1)
    # The template is the frontal projection up to a similarity with no rotation.
    matrix = similarity_to_template(frontal, template)
    assert np.allclose(transform_points(frontal, matrix), template.points, atol=1e-9)
    assert abs(matrix[1, 0]) < 1e-12
    extent = template.points.max(axis=0) - template.points.min(axis=0)
    assert np.isclose(extent.max(), 0.7 * 224)
    centre = (template.points.max(axis=0) + template.points.min(axis=0)) / 2
    assert np.allclose(centre, [111.5, 111.5 + 0.05 * 224])
    # ICT's mean face is left/right symmetric: outer eye corners mirror about the centre line.
    assert np.isclose(template.points[36, 0] + template.points[45, 0], 223.0, atol=1e-3)
    assert template.points[8, 1] > template.points[30, 1] > template.points[27, 1]  # chin below nose below brow
    assert Template.from_dict(template.to_dict()) == template
    assert template.digest == Template.from_dict(template.to_dict()).digest


def test_similarity_recovers_a_known_transform_exactly():
    template = _random_template()
    truth = _similarity(1.7, 23.0, -31.0, 12.5)
    image_points = transform_points(template.points, invert_similarity(truth))
    assert np.allclose(similarity_to_template(image_points, template), truth, atol=1e-10)

    # Missing points (NaN) and zero weights do not count; the rest still pin the transform.
    damaged = image_points.copy()
    damaged[:30] = np.nan
    damaged[30:40] += 50.0
    weights = np.ones(68)
    weights[30:40] = 0.0
    assert np.allclose(similarity_to_template(damaged, template, weights), truth, atol=1e-10)

    # Leading batch dimensions give the per-face result.
    batch = np.stack([image_points, transform_points(template.points, invert_similarity(_similarity(0.5, -5, 3, 4)))])
    matrices = similarity_to_template(batch, template)
    assert matrices.shape == (2, 2, 3)
    assert np.allclose(matrices[1], _similarity(0.5, -5, 3, 4), atol=1e-10)


def test_similarity_is_the_weighted_least_squares_solution():
    rng = np.random.default_rng(1)
    template = _random_template(1)
    points = rng.uniform(0, 500, (68, 2))
    weights = rng.uniform(0.1, 2.0, 68)
    # Oracle: the same problem as a linear least-squares system in (a, b, tx, ty), solved by lstsq.
    rows, rhs = [], []
    for (x, y), (u, v), w in zip(points, template.points, weights):
        rows += [np.sqrt(w) * np.array([x, -y, 1, 0]), np.sqrt(w) * np.array([y, x, 0, 1])]
        rhs += [np.sqrt(w) * u, np.sqrt(w) * v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    expected = np.array([[a, -b, tx], [b, a, ty]])
    assert np.allclose(similarity_to_template(points, template, weights), expected, atol=1e-9)


def test_aligned_crop_puts_the_landmarks_on_the_template():
    # Eight well-separated landmarks carry the fit; the others sit at the centre with weight 0.
    chosen = [0, 8, 16, 30, 36, 45, 48, 54]
    points = np.full((68, 2), 111.5)
    points[chosen] = [[30, 60], [112, 200], [194, 60], [112, 130], [70, 80], [154, 80], [80, 165], [144, 165]]
    weights = np.zeros(68)
    weights[chosen] = 1.0
    template = Template(points=points, weights=weights)
    # image -> crop: scale 0.6, rotation 17°, frame centre (+ an offset) to crop centre.
    height, width = 520, 640
    linear = _similarity(0.6, 17.0, 0.0, 0.0)[:, :2]
    truth = np.concatenate([linear, (np.array([111.5, 111.5]) - linear @ [330.0, 250.0])[:, None]], axis=1)
    image_points = transform_points(template.points, invert_similarity(truth))
    assert np.all((image_points > 20) & (image_points < [width - 20, height - 20]))
    # A frame with a small Gaussian blob at each chosen landmark.
    yy, xx = np.mgrid[0:height, 0:width]
    frame = np.zeros((height, width), np.float64)
    for k in chosen:
        x, y = image_points[k]
        frame += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 5.0**2))
    frame = np.clip(frame * 250, 0, 255).astype(np.uint8)
    crop, matrix = align_face(frame, image_points, template, interpolation="cubic")
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    assert np.allclose(matrix, truth, atol=1e-9)
    grey = crop[:, :, 0].astype(np.float64)
    for k in chosen:
        px, py = template.points[k]
        window = (slice(int(py) - 8, int(py) + 9), slice(int(px) - 8, int(px) + 9))
        weights = grey[window]
        cy, cx = np.mgrid[window]
        centroid = np.array([(weights * cx).sum(), (weights * cy).sum()]) / weights.sum()
        # Only interpolation and 8-bit rounding separate the blob from the template point.
        assert np.linalg.norm(centroid - template.points[k]) < 0.1, k


def test_points_matrices_compose_and_invert():
    rng = np.random.default_rng(3)
    points = rng.uniform(-100, 100, (10, 2))
    first, second = _similarity(1.3, 10, 5, -2), _similarity(0.4, -70, 1, 9)
    composed = compose_similarity(second, first)
    assert np.allclose(transform_points(points, composed), transform_points(transform_points(points, first), second))
    assert np.allclose(transform_points(transform_points(points, first), invert_similarity(first)), points)


def test_warped_camera_projects_to_the_warped_landmarks(ict_face_model):
    rng = np.random.default_rng(4)
    identity = rng.standard_normal(100).astype(np.float32)
    expression = rng.uniform(0, 1, 53).astype(np.float32)
    points3 = landmarks(ict_face_model, identity, expression)
    cameras = WeakPerspectiveCamera(
        rotation=jnp.asarray(rng.uniform(-0.4, 0.4, (3, 3)), jnp.float32),
        scale=jnp.asarray(rng.uniform(5, 15, 3), jnp.float32),
        translation=jnp.asarray(rng.uniform(100, 400, (3, 2)), jnp.float32),
    )
    matrices = np.stack([_similarity(0.7, 30, -10, 4), _similarity(1.9, -100, 50, -60), _similarity(1.0, 0, 0, 0)])
    image = np.asarray(project(cameras, points3[None]))
    warped = np.asarray(project(warp_camera(cameras, matrices), points3[None]))
    assert np.allclose(warped, transform_points(image, matrices), atol=2e-3)


def test_bad_input_is_rejected():
    template = _random_template()
    with pytest.raises(ValueError, match="landmarks"):
        similarity_to_template(np.zeros((67, 2)), template)
    with pytest.raises(ValueError, match="fewer than two"):
        similarity_to_template(np.full((68, 2), np.nan), template)
    with pytest.raises(ValueError, match="coincide"):
        similarity_to_template(np.ones((68, 2)), template)
    with pytest.raises(ValueError, match="uint8"):
        align_face(np.zeros((10, 10, 3), np.float32), template.points, template)
    with pytest.raises(ValueError, match="not a similarity"):
        warp_camera(WeakPerspectiveCamera(rotation=jnp.zeros(3), scale=jnp.array(1.0), translation=jnp.zeros(2)),
                    [[1.0, 0.5, 0.0], [0.0, 1.0, 0.0]])
    # A grey image is accepted and comes back with three channels.
    crop, _ = align_face(np.full((50, 60), 7, np.uint8), template.points / 4, template)
    assert crop.shape == (224, 224, 3)
    assert cv2.countNonZero(crop[:, :, 0]) > 0
