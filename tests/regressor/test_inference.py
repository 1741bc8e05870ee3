"""Inference: batched, single-image and image + landmarks paths agree with the model and with evaluation."""

from __future__ import annotations

import cv2
import jax
import numpy as np
import pytest

from fitting.shards import ShardDataset
from fitting.template import align_face
from regressor.inference import Predictor
from regressor.input_pipeline import resize_crops


@pytest.fixture(scope="module")
def predictor(tiny_run):
    """One predictor for the module: its compiled programs are shared by the tests."""
    return Predictor.from_run(tiny_run.workdir, batch_size=4)


def test_predictor_paths_agree(predictor, tiny_run, synthetic_faces, synthetic_shards):
    assert predictor.template == synthetic_faces.template
    assert predictor.expression_names == synthetic_faces.expression_names
    validation = ShardDataset(synthetic_shards["validation"])
    crops = np.stack([validation.image(k) for k in range(len(validation))])

    batched = predictor.predict_crops(crops[:7])  # chunks of 4 and a padded 3
    assert batched.shape == (7, 28) and batched.dtype == np.float32
    # Oracle: the model applied directly to the resized crops with the final state.
    state = tiny_run.state
    direct = np.asarray(jax.jit(state.apply_fn)({"params": state.params, "batch_stats": state.batch_stats},
                                                resize_crops(crops[:7], 64)))
    assert np.allclose(batched, direct, atol=1e-5)
    assert np.allclose(predictor.predict_crop(crops[5]), direct[5], atol=1e-5)
    # The trained head is no longer the constant it started as.
    assert np.abs(batched - batched.mean(axis=0)).max() > 1e-3

    # Mean squared error over the validation split equals the run's evaluation.
    predictions = predictor.predict_crops(crops)
    mse = np.mean((predictions - validation.column("expression")) ** 2)
    assert np.isclose(mse, tiny_run.eval_metrics["mse"], rtol=1e-4)


def test_image_and_landmarks_path_aligns_like_the_data(predictor, synthetic_faces):
    # generate() keeps only crops: rebuild a larger "frame" from one by the inverse
    # alignment, so the frame landmarks of the example are its true landmarks there.
    example = synthetic_faces.generate(100, 1, seed=3)
    matrix = example["alignment"][0]
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    frame = cv2.warpAffine(example["crop"][0], inverse, (400, 380), flags=cv2.INTER_LINEAR)
    frame_landmarks = example["frame_landmarks"][0]
    crop, used = align_face(frame, frame_landmarks, predictor.template)
    assert np.allclose(used, matrix, atol=1e-9)
    single = predictor.predict_image(frame, frame_landmarks)
    assert np.allclose(single, predictor.predict_crop(crop), atol=1e-6)
    four = predictor.predict_images([frame] * 4, np.stack([frame_landmarks] * 4))  # the compiled size-4 program
    assert np.allclose(four, single[None], atol=1e-5)


class _FakeDetector:
    """Reports fixed faces, so the detector path is checked without dlib."""

    def __init__(self, landmarks):
        self.landmarks = np.asarray(landmarks, np.float32)
        self.calls = 0

    def detect(self, image):
        from fitting.detection import FaceDetection

        self.calls += 1
        count = len(self.landmarks)
        boxes = np.concatenate([self.landmarks.min(axis=1), self.landmarks.max(axis=1)], axis=1)
        return FaceDetection.create(boxes, self.landmarks, np.linspace(1.0, 0.5, count))


def test_detector_path_predicts_each_detected_face(predictor, synthetic_faces):
    example = synthetic_faces.generate(100, 1, seed=4)
    matrix = example["alignment"][0]
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    frame = cv2.warpAffine(example["crop"][0], inverse, (400, 380), flags=cv2.INTER_LINEAR)
    points = example["frame_landmarks"][0]
    shifted = points + np.array([5.0, -3.0])  # a second, slightly different "face"
    detector = _FakeDetector([points, shifted])

    detection, expressions = predictor.predict_faces(frame, detector=detector)
    assert detector.calls == 1 and detection.n_faces == 2 and expressions.shape == (2, 28)
    # Oracle: the landmarks path on the same points, in the detector's (score) order.
    assert np.allclose(expressions[0], predictor.predict_image(frame, points), atol=1e-5)
    assert np.allclose(expressions[1], predictor.predict_image(frame, shifted), atol=1e-5)

    one, first = predictor.predict_faces(frame, detector=detector, max_faces=1)
    assert one.n_faces == 1 and np.allclose(first, expressions[:1], atol=1e-5)
    none, empty = predictor.predict_faces(frame, detector=_FakeDetector(np.zeros((0, 68, 2))))
    assert none.n_faces == 0 and empty.shape == (0, 28)
    with pytest.raises(ValueError, match="max_faces"):
        predictor.predict_faces(frame, detector=detector, max_faces=0)
