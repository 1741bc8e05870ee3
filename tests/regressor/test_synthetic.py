"""Synthetic renders: exact targets, exact alignment, reproducibility, shards and sample grid."""

from __future__ import annotations

import dataclasses
import json

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from fitting.shards import ShardDataset
from morphable.camera import WeakPerspectiveCamera, project
from morphable.model import landmarks
from morphable.rotation import euler_to_matrix
from regressor.synthetic import SceneConfig, SyntheticFaces, _euler_to_matrix, save_sample_grid


def test_examples_are_reproducible_and_index_addressable(synthetic_faces):
    first = synthetic_faces.generate(3, 2, seed=7)
    again = synthetic_faces.generate(2, 3, seed=7)
    for key in first:
        assert np.array_equal(first[key], again[key][1:]), key
    other_seed = synthetic_faces.generate(3, 2, seed=8)
    assert not np.array_equal(first["expression"], other_seed["expression"])


def test_targets_and_landmarks_are_exact(synthetic_faces):
    batch = synthetic_faces.generate(0, 4, seed=0)
    model = synthetic_faces.model
    assert batch["expression"].shape == (4, 28) and batch["crop"].shape == (4, 224, 224, 3)
    # The target is the projection of the blendshape weights on the 28-d basis.
    assert np.allclose(batch["expression"], batch["blendshapes"] @ synthetic_faces.mapping.to_orthonormal.T, atol=1e-5)
    # The stored camera, identity and expression reproduce the stored crop landmarks
    # through the library's own model and projection.
    @jax.jit
    def reproject(identity, expression, camera_vector):
        camera = WeakPerspectiveCamera(rotation=camera_vector[:, :3], scale=camera_vector[:, 3],
                                       translation=camera_vector[:, 4:])
        return project(camera, landmarks(model, identity, expression))

    reprojected = reproject(batch["identity"], batch["expression"], batch["camera"])
    assert np.abs(np.asarray(reprojected) - batch["landmarks"]).max() < 0.02
    # The renderer's NumPy rotation convention is morphable.rotation's.
    angles = np.array([[30.0, -10.0, 5.0], [-12.0, 20.0, -40.0]])
    assert np.allclose(_euler_to_matrix(angles), np.asarray(euler_to_matrix(jnp.asarray(angles))), atol=1e-6)


def test_a_frontal_neutral_mean_face_lands_exactly_on_the_template(ict_face_model):
    scene = SceneConfig(yaw_degrees=0, pitch_degrees=0, roll_degrees=0, identity_scale=0.0, active_probability=0.0,
                        symmetric_probability=0.0)
    faces = SyntheticFaces(ict_face_model, scene=scene)
    batch = faces.generate(0, 2, seed=0)
    assert np.abs(batch["expression"]).max() == 0.0
    # The template is this face's frontal landmarks: only the similarity remains.
    assert np.abs(batch["landmarks"] - faces.template.points).max() < 1e-3


def test_the_face_is_drawn_where_its_landmarks_are(synthetic_faces):
    scene = synthetic_faces.scene
    rng = np.random.default_rng(0)
    identity = rng.standard_normal(100)
    vertices = synthetic_faces.renderer.vertices(identity, np.zeros(28))
    background = np.zeros((scene.frame_size, scene.frame_size, 3), np.uint8)
    image, points = synthetic_faces.renderer.render(vertices, _euler_to_matrix(np.array([20.0, 5.0, -10.0])), 9.0,
                                                    (160.0, 170.0), background=background)
    drawn = image.max(axis=2) > 0
    # Inside the jaw-and-brow outline everything is painted (skin, eyes or mouth cavity) ...
    hull = cv2.convexHull(np.round(points[:27]).astype(np.int32))
    inside = np.zeros_like(drawn, np.uint8)
    cv2.fillConvexPoly(inside, hull, 1)
    assert drawn[inside.astype(bool)].mean() > 0.99
    # ... and the face covers more than the landmark hull (forehead, ears), not the whole frame.
    assert inside.sum() < drawn.sum() < 0.8 * drawn.size


def test_shards_and_sample_grid(synthetic_faces, synthetic_shards, tmp_path):
    data = ShardDataset(synthetic_shards["train"])
    assert len(data) == 48 and len(data.shard_paths) == 2
    assert data.expression_basis == synthetic_faces.expression_basis
    assert data.template == synthetic_faces.template
    reference = synthetic_faces.generate(40, 2, seed=0)
    for k in range(2):
        record = data[40 + k]
        assert np.array_equal(record["expression"], reference["expression"][k])
        assert np.array_equal(record["landmarks"], reference["landmarks"][k])
        assert record["frame_index"] == 40 + k and record["video_id"] == "synthetic-0"
        assert np.abs(data.image(40 + k).astype(int) - reference["crop"][k]).mean() < 4  # JPEG
    grid = save_sample_grid(tmp_path / "grid.png", reference["crop"], columns=2, landmarks=reference["landmarks"],
                            template=synthetic_faces.template)
    assert cv2.imread(str(grid)).shape == (224, 448, 3)


def test_scene_config_is_recorded(synthetic_shards):
    extra = ShardDataset(synthetic_shards["validation"]).metadata[0]["extra"]
    assert extra["seed"] == 1 and extra["scene"] == json.loads(json.dumps(dataclasses.asdict(SceneConfig())))
