"""Detector interface and backends: dlib on real photos, face-alignment through an injected network."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from fitting.detection import (
    DlibDetector,
    FaceAlignmentDetector,
    FaceDetection,
    LandmarkDetector,
    check_image,
)

# --- the FaceDetection container -------------------------------------------------------------


def test_create_validates_shapes_and_sorts_by_score():
    landmarks = np.arange(2 * 68 * 2, dtype=np.float32).reshape(2, 68, 2)
    detection = FaceDetection.create([[0, 0, 4, 4], [1, 1, 5, 5]], landmarks, [0.2, 0.7], depth=np.ones((2, 68)))
    assert detection.n_faces == 2
    np.testing.assert_array_equal(detection.landmarks[0], landmarks[1])
    np.testing.assert_array_equal(detection.boxes[0], [1, 1, 5, 5])
    with pytest.raises(ValueError, match="landmarks"):
        FaceDetection.create([[0, 0, 4, 4]], np.zeros((1, 5, 2)), [1.0])
    with pytest.raises(ValueError, match="boxes"):
        FaceDetection.create([[0, 0, 4]], np.zeros((1, 68, 2)), [1.0])
    with pytest.raises(ValueError, match="depth"):
        FaceDetection.create([[0, 0, 4, 4]], np.zeros((1, 68, 2)), [1.0], depth=np.zeros((1, 3)))
    empty = FaceDetection.create([], [], [])
    assert empty.n_faces == 0 and empty.landmarks.shape == (0, 68, 2)


def test_check_image():
    assert check_image(np.zeros((3, 4, 1), np.uint8)).shape == (3, 4, 3)
    with pytest.raises(ValueError, match="uint8"):
        check_image(np.zeros((3, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        check_image(np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        check_image(np.zeros((0, 4, 3), np.uint8))


# --- face-alignment adapter, with an injected fake network -----------------------------------


class FakeFan:
    """Answers like ``face_alignment.FaceAlignment.get_landmarks_from_image`` (v1.4–1.5)."""

    def __init__(self, faces, three_d=False, with_boxes=True):
        self.faces = faces  # list of (landmarks (68, 2), box x0 y0 x1 y1, score)
        self.three_d = three_d
        self.with_boxes = with_boxes
        self.calls = []

    def get_landmarks_from_image(self, image, detected_faces=None, return_bboxes=False, return_landmark_score=False):
        self.calls.append((image.shape, image.dtype, return_bboxes, return_landmark_score))
        if not self.faces:
            import warnings

            warnings.warn("No faces were detected.")
            return None, None, None
        points = []
        for landmarks, _, _ in self.faces:
            if self.three_d:
                landmarks = np.concatenate([landmarks, np.arange(68.0)[:, None]], axis=1)
            points.append(landmarks)
        heat = [np.full(68, 0.8) for _ in self.faces]
        boxes = [np.array([*box, score]) for _, box, score in self.faces] if self.with_boxes else None
        return points, heat, boxes


def _known_faces():
    rng = np.random.default_rng(0)
    first = rng.uniform(100, 200, (68, 2))
    second = rng.uniform(300, 400, (68, 2))
    return [(first, [90, 90, 210, 210], 0.6), (second, [290, 290, 410, 410], 0.99)]


def test_face_alignment_adapter_passes_known_landmarks_through():
    faces = _known_faces()
    network = FakeFan(faces)
    detector = FaceAlignmentDetector("2d", network=network)
    assert isinstance(detector, LandmarkDetector)
    detection = detector.detect(np.zeros((480, 640, 3), np.uint8))
    assert network.calls == [((480, 640, 3), np.uint8, True, True)]
    assert detection.n_faces == 2 and detection.depth is None
    # Most confident first: the second face.
    np.testing.assert_allclose(detection.landmarks[0], faces[1][0], rtol=1e-6)
    np.testing.assert_allclose(detection.landmarks[1], faces[0][0], rtol=1e-6)
    np.testing.assert_allclose(detection.boxes, [faces[1][1], faces[0][1]])
    np.testing.assert_allclose(detection.scores, [0.99, 0.6], rtol=1e-6)


def test_face_alignment_three_d_mode_returns_depth():
    faces = _known_faces()[:1]
    detection = FaceAlignmentDetector("3d", network=FakeFan(faces, three_d=True)).detect(np.zeros((8, 8), np.uint8))
    np.testing.assert_allclose(detection.landmarks[0], faces[0][0], rtol=1e-6)
    np.testing.assert_allclose(detection.depth[0], np.arange(68.0))
    with pytest.raises(ValueError, match="3d mode"):
        FaceAlignmentDetector("3d", network=FakeFan(faces)).detect(np.zeros((8, 8, 3), np.uint8))


def test_face_alignment_without_boxes_uses_the_landmark_extent_and_heat_scores():
    faces = _known_faces()[:1]
    detection = FaceAlignmentDetector(network=FakeFan(faces, with_boxes=False)).detect(np.zeros((8, 8, 3), np.uint8))
    np.testing.assert_allclose(detection.boxes[0], [*faces[0][0].min(0), *faces[0][0].max(0)], rtol=1e-6)
    assert detection.scores[0] == pytest.approx(0.8)


def test_face_alignment_no_face_is_empty_and_quiet(recwarn):
    detection = FaceAlignmentDetector(network=FakeFan([])).detect(np.zeros((8, 8, 3), np.uint8))
    assert detection.n_faces == 0
    assert not [w for w in recwarn if "No faces" in str(w.message)]


@pytest.mark.parametrize("mode, enum_name", [("2d", "TWO_D"), ("2.5d", "TWO_HALF_D"), ("3d", "THREE_D")])
def test_face_alignment_network_is_built_for_the_mode(monkeypatch, mode, enum_name):
    built = []

    class FaceAlignment:
        def __init__(self, landmarks_type, device="cuda", **options):
            built.append((landmarks_type, device, options))

        def get_landmarks_from_image(self, *args, **kwargs):
            return None

    fake = types.ModuleType("face_alignment")
    fake.LandmarksType = types.SimpleNamespace(TWO_D=1, TWO_HALF_D=2, THREE_D=3)
    fake.FaceAlignment = FaceAlignment
    monkeypatch.setitem(sys.modules, "face_alignment", fake)
    detector = FaceAlignmentDetector(mode, device="cpu", face_detector="blazeface")
    assert built == [(getattr(fake.LandmarksType, enum_name), "cpu", {"face_detector": "blazeface"})]
    assert detector.detect(np.zeros((4, 4, 3), np.uint8)).n_faces == 0


def test_missing_packages_name_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "face_alignment", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install"):
        FaceAlignmentDetector("2d")
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(ImportError, match=r"deepexp3d\[landmarks\]"):
        DlibDetector()


def test_face_alignment_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        FaceAlignmentDetector("4d", network=FakeFan([]))
    with pytest.raises(ValueError, match="network"):
        FaceAlignmentDetector("2d", network=object())


# --- dlib on real photos ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dlib_detector():
    pytest.importorskip("dlib")
    from fitting.detection import dlib_predictor_path

    try:
        dlib_predictor_path()
    except (FileNotFoundError, ImportError) as error:
        pytest.skip(f"no dlib 68-point model: {error}")
    return DlibDetector()


def _nme(points, truth):
    return float(np.linalg.norm(points - truth, axis=1).mean() / np.linalg.norm(truth[36] - truth[45]))


def _photos(shared_data, count):
    from fitting.media import read_image
    from fitting.pts import read_pts

    folder = shared_data / "landmark-images" / "lfpw-train"
    if not folder.is_dir():
        pytest.skip(f"{folder} missing")
    images = sorted(folder.glob("*.png"))[:count]
    return [(read_image(path), read_pts(path.with_suffix(".pts"))) for path in images]


def test_dlib_landmarks_match_the_ground_truth(dlib_detector, shared_data):
    errors = []
    for image, truth in _photos(shared_data, 12):
        detection = dlib_detector.detect(image)
        if detection.n_faces == 0:
            continue
        centre = truth.mean(axis=0)
        nearest = np.argmin(np.linalg.norm(0.5 * (detection.boxes[:, :2] + detection.boxes[:, 2:]) - centre, axis=1))
        errors.append(_nme(detection.landmarks[nearest], truth))
    assert len(errors) >= 10
    # The bar is 8 %; dlib reaches ≈ 3 % on these (training-set) photos.
    assert np.mean(errors) < 0.05


def test_dlib_on_an_image_without_a_face(dlib_detector):
    detection = dlib_detector.detect(np.full((200, 300, 3), 127, np.uint8))
    assert detection.n_faces == 0 and detection.landmarks.shape == (0, 68, 2)


def test_dlib_downscaled_search_keeps_full_resolution_landmarks(dlib_detector, shared_data):
    import cv2

    image, truth = _photos(shared_data, 1)[0]
    # The same photo enlarged 6×: the search runs on a ≤ 1280 px copy, the landmarks on
    # the full image, so they must land on the enlarged ground truth.
    scale = 6
    large = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    detection = dlib_detector.detect(large)
    assert detection.n_faces >= 1
    truth_large = (truth + 0.5) * scale - 0.5
    assert _nme(detection.landmarks[0], truth_large) < 0.06
    assert detection.boxes[0, 2] - detection.boxes[0, 0] > 2 * 80  # the box is in full-resolution pixels
