"""Photo → faces → landmarks → fit: dlib on a real photo, and an injected detector for several faces."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import morphable
from fitting.detection import FaceDetection
from fitting.faces import FaceFit, fit_faces


@pytest.fixture(scope="module")
def tiny_model():
    """68 landmark vertices of a face-sized point cloud, 6 identity and 3 blendshape components."""
    rng = np.random.default_rng(1)
    return morphable.make_model(
        rng.normal(size=(68, 3)) * np.array([50.0, 60.0, 20.0]),
        rng.normal(size=(68, 3, 6)) * 4.0,
        rng.normal(size=(68, 3, 3)) * 6.0,
        triangles=[[0, 1, 2]],
        landmark_indices=np.arange(68),
        expression_kind="blendshape",
        units="mm",
        name="tiny",
    )


def _face(model, identity, expression, rotation, scale, translation):
    camera = morphable.WeakPerspectiveCamera(
        rotation=jnp.asarray(rotation, jnp.float32),
        scale=jnp.asarray(scale, jnp.float32),
        translation=jnp.asarray(translation, jnp.float32),
    )
    return np.asarray(morphable.project(camera, morphable.landmarks(model, identity, expression)))


class FakeDetector:
    """Returns fixed faces, deliberately in increasing score order (not sorted like ``create``)."""

    def __init__(self, landmarks, scores):
        self.landmarks = np.asarray(landmarks, np.float32)
        self.scores = np.asarray(scores, np.float32)
        self.images = []

    def detect(self, image):
        self.images.append(image)
        boxes = np.concatenate([self.landmarks.min(axis=1), self.landmarks.max(axis=1)], axis=1)
        return FaceDetection(boxes=boxes, landmarks=self.landmarks, scores=self.scores)


def test_faces_from_an_injected_detector_are_fitted_in_score_order(tiny_model):
    identity = np.array([0.5, -0.3, 0.2, 0.0, 0.1, -0.2], np.float32)
    expressions = np.array([[0.6, 0.1, 0.0], [0.0, 0.4, 0.7], [0.2, 0.2, 0.2], [0.0, 0.0, 0.9]], np.float32)
    cameras = [
        ([0.0, 0.2, 0.0], 1.5, [200.0, 150.0]),
        ([0.1, -0.3, 0.05], 0.8, [500.0, 300.0]),
        ([0.0, 0.0, 0.1], 1.0, [350.0, 350.0]),
        ([0.0, 0.1, 0.0], 1.2, [100.0, 380.0]),
    ]
    faces = np.stack([_face(tiny_model, identity, e, *camera) for e, camera in zip(expressions, cameras)])
    detector = FakeDetector(faces, scores=[0.2, 1.5, 0.7, 0.1])
    image = np.zeros((480, 640), np.uint8)  # greyscale is accepted and made RGB

    # All four faces: one batch of 4 (no padding), most confident first.
    fitted = fit_faces(image, tiny_model, detector=detector)
    assert detector.images[0].shape == (480, 640, 3)
    assert [type(face) for face in fitted] == [FaceFit] * 4
    assert [face.score for face in fitted] == pytest.approx([1.5, 0.7, 0.2, 0.1])
    for face, source in zip(fitted, [1, 2, 0, 3]):
        np.testing.assert_array_equal(face.landmarks, faces[source])
        np.testing.assert_allclose(face.box, [*faces[source].min(0), *faces[source].max(0)])
        # Unbatched results, and the noise-free landmarks are reproduced (faces are 100-200 px wide).
        assert face.fit.expression.shape == (3,) and face.fit.rmse.shape == ()
        assert bool(face.fit.valid) and float(face.fit.rmse) < 1.0
        assert float(np.abs(face.fit.expression - expressions[source]).max()) < 0.1

    # The three most confident, padded to the same batch of 4 with a copy: the same fits.
    top = fit_faces(image, tiny_model, detector=detector, max_faces=3)
    assert [face.score for face in top] == pytest.approx([1.5, 0.7, 0.2])
    for alone, together in zip(top, fitted):
        np.testing.assert_allclose(alone.fit.expression, together.fit.expression, atol=1e-5)
        np.testing.assert_allclose(alone.fit.camera.scale, together.fit.camera.scale, rtol=1e-5)


def test_bad_arguments_are_named(tiny_model):
    detector = FakeDetector(np.zeros((0, 68, 2)), scores=[])
    with pytest.raises(ValueError, match="max_faces"):
        fit_faces(np.zeros((8, 8, 3), np.uint8), tiny_model, detector=detector, max_faces=0)
    with pytest.raises(ValueError, match="uint8"):
        fit_faces(np.zeros((8, 8, 3), np.float32), tiny_model, detector=detector)
    assert fit_faces(np.zeros((8, 8, 3), np.uint8), tiny_model, detector=detector) == []


# --- dlib on real photos ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dlib_detector():
    from fitting.detection import DlibDetector

    try:
        return DlibDetector()
    except ImportError as error:
        pytest.skip(str(error))


def test_blank_image_has_no_face(dlib_detector, tiny_model):
    assert fit_faces(np.full((240, 320, 3), 127, np.uint8), tiny_model, detector=dlib_detector) == []


@pytest.mark.slow
def test_real_photo_landmarks_and_fit(dlib_detector, ict_face_model, shared_data):
    from fitting.media import read_image
    from fitting.pts import read_pts

    folder = shared_data / "landmark-images" / "lfpw-train"
    photos = sorted(folder.glob("*.png"))[:1]
    if not photos:
        pytest.skip(f"no photos in {folder}")
    image, truth = read_image(photos[0]), read_pts(photos[0].with_suffix(".pts"))

    faces = fit_faces(image, ict_face_model, detector=dlib_detector)
    assert len(faces) >= 1
    centres = np.array([0.5 * (face.box[:2] + face.box[2:]) for face in faces])
    face = faces[int(np.argmin(np.linalg.norm(centres - truth.mean(0), axis=1)))]
    eye_distance = float(np.linalg.norm(truth[36] - truth[45]))
    detection_nme = float(np.linalg.norm(face.landmarks - truth, axis=1).mean()) / eye_distance
    assert detection_nme < 0.06
    # The 3DMM reproduces the detected points to a few percent of the eye distance.
    assert bool(face.fit.valid)
    assert float(face.fit.rmse_normalised) < 0.05
    assert face.fit.identity.shape == (ict_face_model.n_identity,)
