"""Labelled-image CSVs and expression features of images (detect → fit → most confident face), with the cache."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import jax.numpy as jnp
import numpy as np
import pytest

import morphable
from classifier.features import expression_features, feature_cache_path, read_labels_csv
from fitting.config import ImageFitConfig
from fitting.detection import FaceDetection
from fitting.image import fit_image
from morphable.model import make_model

# --- read_labels_csv ----------------------------------------------------------------------------


def test_reads_the_emotions_wild_labels(shared_data):
    csv_path = shared_data / "emotions-wild" / "labels.csv"
    if not csv_path.is_file():
        pytest.skip(f"emotions-wild not found at {csv_path}")
    labelled = read_labels_csv(csv_path)
    assert len(labelled) == 1120
    names, counts = np.unique(labelled.labels, return_counts=True)
    assert names.tolist() == ["anger", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    assert counts.tolist() == [160] * 7
    assert labelled.subjects is not None and np.unique(labelled.subjects).size < 1120  # some shared groups
    assert labelled.paths[0] == (csv_path.parent / "images" / "ew_0001.jpg").resolve()
    assert all(p.is_absolute() for p in labelled.paths)


def test_paths_are_relative_to_the_csv_folder(tmp_path, monkeypatch):
    (tmp_path / "set" / "img").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        (tmp_path / "set" / "img" / name).write_bytes(b"")
    absolute = tmp_path / "elsewhere.png"
    absolute.write_bytes(b"")
    (tmp_path / "set" / "labels.csv").write_text(
        f"label,path,extra\nhappy,img/a.png,1\n sad , img/b.png ,2\nhappy,{absolute},3\n"
    )
    monkeypatch.chdir(tmp_path)  # a different working directory must not matter
    labelled = read_labels_csv(Path("set/labels.csv"))
    assert [p.name for p in labelled.paths] == ["a.png", "b.png", "elsewhere.png"]
    assert labelled.paths[1] == (tmp_path / "set" / "img" / "b.png").resolve()
    assert labelled.labels.tolist() == ["happy", "sad", "happy"]
    assert labelled.subjects is None
    assert labelled.source == (tmp_path / "set" / "labels.csv").resolve()


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        ("file,subject\na.png,s1\n", ValueError, "no 'label' column; found columns file, subject"),
        ("image,label\na.png,happy\n", ValueError, "no image column: expected one of 'path', 'file'"),
        ("file,label\n", ValueError, "no rows after the header"),
        ("file,label\na.png,happy\na.png,\n", ValueError, "line 3: empty label"),
        ("file,label,subject\na.png,happy,\n", ValueError, "line 2: empty subject"),
        ("file,label\na.png,happy\nmissing.png,sad\nalso.png,sad\n", FileNotFoundError, "2 of 3 listed images"),
    ],
)
def test_bad_csvs_raise_clear_errors(tmp_path, content, error, message):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(error, match=message) as raised:
        read_labels_csv(tmp_path / "labels.csv")
    assert "labels.csv" in str(raised.value)
    with pytest.raises(FileNotFoundError, match="labels CSV not found"):
        read_labels_csv(tmp_path / "nope.csv")


# --- expression_features with a scripted detector -------------------------------------------------


def toy_model(expression_scale: float = 0.3):
    rng = np.random.default_rng(0)
    return make_model(
        rng.normal(size=(80, 3)) * 5.0,
        rng.normal(size=(80, 3, 4)),
        rng.normal(size=(80, 3, 6)) * expression_scale,
        triangles=[[0, 1, 2]],
        landmark_indices=np.arange(68),
        expression_kind="blendshape",
        name="toy",
    )


def face_landmarks(model, expression, shift: float = 0.0) -> np.ndarray:
    camera = morphable.WeakPerspectiveCamera(
        jnp.array([0.1, 0.2, 0.0]), jnp.array(4.0), jnp.array([80.0 + shift, 60.0])
    )
    points = morphable.landmarks(model, np.zeros(4), np.asarray(expression, np.float32))
    return np.asarray(morphable.project(camera, points), np.float32)


class ScriptedDetector:
    """Answers from the image's first pixel value: a list of (landmarks, score) per value."""

    def __init__(self, faces: dict[int, list]):
        self.faces = faces
        self.calls = 0

    def __repr__(self) -> str:
        return "ScriptedDetector(v1)"

    def detect(self, image):
        self.calls += 1
        found = self.faces.get(int(image[0, 0, 0]), [])
        if not found:
            return FaceDetection.empty()
        boxes = np.tile([[10.0, 10.0, 150.0, 110.0]], (len(found), 1))
        # Deliberately not ordered by score.
        return FaceDetection.create(boxes, np.stack([f[0] for f in found]), [f[1] for f in found], sort=False)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    model = toy_model()
    folder = tmp_path_factory.mktemp("images")
    expressions = [np.full(6, 0.2), np.array([0.8, 0.1, 0.0, 0.5, 0.3, 0.0]), np.full(6, 0.6)]
    faces = {
        1: [(face_landmarks(model, expressions[0]), 1.0)],
        2: [],  # no face
        # Two faces: the second is more confident, so it is the one fitted.
        3: [(face_landmarks(model, expressions[2], shift=-30.0), 0.5), (face_landmarks(model, expressions[1]), 2.0)],
    }
    paths = []
    for value in (1, 2, 3):
        path = folder / f"image_{value}.png"
        cv2.imwrite(str(path), np.full((120, 160, 3), value, np.uint8))
        paths.append(path)
    return model, paths, faces


def test_rows_follow_the_images_and_the_most_confident_face(scripted):
    model, paths, faces = scripted
    detector = ScriptedDetector(faces)
    result = expression_features(paths, model, detector=detector, progress=False)
    assert result.features.shape == (3, 6) and result.features.dtype == np.float32
    np.testing.assert_array_equal(result.found, [True, False, True])
    np.testing.assert_array_equal(result.detected, [True, False, True])
    assert np.all(np.isnan(result.features[1])) and np.isnan(result.score[1])
    assert result.score[0] == 1.0 and result.score[2] == 2.0
    assert result.paths == tuple(paths) and detector.calls == 3
    # Oracle: the single-image fitter on the chosen face's landmarks (principal point = image centre).
    centre = np.array([159 / 2, 119 / 2], np.float32)
    for row, landmarks in ((0, faces[1][0][0]), (2, faces[3][1][0])):
        direct = fit_image(model, landmarks[None], principal_point=centre, config=ImageFitConfig())
        np.testing.assert_allclose(result.features[row], np.asarray(direct.expression[0]), atol=1e-5)
    # Noise-free landmarks of a known expression: the fit comes back close to it (prior shrinks a little).
    np.testing.assert_allclose(result.features[2], [0.8, 0.1, 0.0, 0.5, 0.3, 0.0], atol=0.1)
    assert result.rmse_normalised[0] < 0.05


def test_cache_reuses_rows_and_misses_on_changes(scripted, tmp_path):
    model, paths, faces = scripted
    cache = tmp_path / "cache"
    detector = ScriptedDetector(faces)
    first = expression_features(paths, model, detector=detector, cache=cache, progress=False)
    assert detector.calls == 3 and not first.cached.any()
    assert feature_cache_path(cache, first.basis_id, detector).is_file()

    again = expression_features(paths, model, detector=detector, cache=cache, progress=False)
    assert detector.calls == 3 and again.cached.all()
    np.testing.assert_array_equal(again.features, first.features)  # NaN rows included
    np.testing.assert_array_equal(again.found, first.found)
    np.testing.assert_array_equal(again.score, first.score)

    # A modified file (new modification time) is recomputed, the others are not.
    stat = paths[0].stat()
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = expression_features(paths, model, detector=detector, cache=cache, progress=False)
    assert detector.calls == 4
    np.testing.assert_array_equal(touched.cached, [False, True, True])

    # Another expression basis is another pipeline: nothing is reused.
    other = toy_model(expression_scale=0.5)
    assert expression_features(paths, other, detector=detector, cache=cache, progress=False).cached.sum() == 0
    assert detector.calls == 7


def test_a_corrupt_cache_is_ignored_with_a_warning(scripted, tmp_path):
    model, paths, faces = scripted
    detector = ScriptedDetector(faces)
    first = expression_features(paths[:1], model, detector=detector, cache=tmp_path, progress=False)
    feature_cache_path(tmp_path, first.basis_id, detector).write_bytes(b"not an npz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = expression_features(paths[:1], model, detector=detector, cache=tmp_path, progress=False)
    assert any("unreadable" in str(w.message) for w in caught)
    assert not again.cached.any() and detector.calls == 2
    np.testing.assert_array_equal(again.features, first.features)


def test_missing_images_fail_before_any_work(scripted, tmp_path):
    model, paths, faces = scripted
    detector = ScriptedDetector(faces)
    with pytest.raises(FileNotFoundError, match="1 images not found: .*nope.png"):
        expression_features([*paths, tmp_path / "nope.png"], model, detector=detector, progress=False)
    assert detector.calls == 0
    with pytest.raises(ValueError, match="no images"):
        expression_features([], model, detector=detector)


@pytest.mark.slow
def test_emotions_wild_images_with_dlib(shared_data, ict_face_model, tmp_path):
    pytest.importorskip("dlib")
    csv_path = shared_data / "emotions-wild" / "labels.csv"
    if not csv_path.is_file():
        pytest.skip(f"emotions-wild not found at {csv_path}")
    from fitting.detection import DlibDetector

    labelled = read_labels_csv(csv_path)
    paths = labelled.paths[:3]
    result = expression_features(paths, ict_face_model, detector=DlibDetector(), cache=tmp_path, progress=False)
    # The data set guarantees one dlib face per image.
    assert result.found.all() and result.features.shape == (3, 53)
    assert result.features.min() >= 0.0 and result.features.max() <= 1.0
    assert np.all(result.rmse_normalised < 0.1)
    assert result.expression_names == tuple(ict_face_model.expression_names)
