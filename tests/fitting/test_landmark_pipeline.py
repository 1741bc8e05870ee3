"""Videos → detection → tracking → smoothing, on synthetic clips and on the real clips of the data set."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

from fitting.detection import FaceDetection
from fitting.landmark_pipeline import detect_video, detect_videos, summarize
from fitting.tracking import TrackingConfig

# --- synthetic clips with a detector that finds a white square ---------------------------------

SIDE = 40  # square side, pixels


def _square_video(path, centres, size=(160, 240), fps=25.0):
    """A black clip with a white square centred at each given (x, y) (None: no square)."""
    height, width = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for centre in centres:
        frame = np.zeros((height, width, 3), np.uint8)
        if centre is not None:
            x, y = (int(round(c)) for c in centre)
            frame[y - SIDE // 2 : y + SIDE // 2, x - SIDE // 2 : x + SIDE // 2] = 255
        writer.write(frame)
    writer.release()
    return path


class SquareDetector:
    """Finds the white square; its 68 'landmarks' are its centre (a stand-in for a face)."""

    def __init__(self):
        self.frames = 0

    def detect(self, image):
        self.frames += 1
        ys, xs = np.nonzero(image[..., 0] > 128)
        if xs.size < 100:
            return FaceDetection.empty()
        box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        centre = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]
        return FaceDetection.create([box], np.tile(centre, (1, 68, 1)), [1.0])


def test_pipeline_tracks_smooths_and_fills_a_short_gap(tmp_path):
    centres = [(60.0 + 2 * t, 80.0) for t in range(40)]
    for t in (20, 21, 22):  # the "face" vanishes for 3 frames
        centres[t] = None
    path = _square_video(tmp_path / "square.avi", centres)
    detector = SquareDetector()
    result = detect_video(path, detector)
    assert result.status == "ok" and result.info.frame_count == 40
    assert result.frame_indices.tolist() == list(range(40)) and detector.frames == 40
    assert result.valid.all() and result.filled.tolist() == [t in (20, 21, 22) for t in range(40)]
    truth = np.array([60.0 + 2 * t for t in range(40)])
    # Straight-line motion: the spline keeps it and bridges the gap (holding the last
    # value, or a lag, would be 2 px or more off).
    np.testing.assert_allclose(result.landmarks[:, 0, 0], truth, atol=0.05)
    np.testing.assert_allclose(result.landmarks[:, 0, 1], 80.0, atol=0.05)
    assert np.isnan(result.track.landmarks[20:23]).all()


def test_pipeline_stride_and_max_frames(tmp_path):
    path = _square_video(tmp_path / "square.avi", [(60.0 + t, 80.0) for t in range(30)])
    result = detect_video(path, SquareDetector(), stride=4, max_frames=5)
    assert result.frame_indices.tolist() == [0, 4, 8, 12, 16]
    np.testing.assert_allclose(result.landmarks[:, 0, 0], 60.0 + result.frame_indices, atol=0.05)


def test_pipeline_stops_detecting_once_dropped(tmp_path):
    centres = [(60.0, 80.0)] * 3 + [None] * 37
    path = _square_video(tmp_path / "leaves.avi", centres)
    detector = SquareDetector()
    result = detect_video(path, detector)
    assert result.status == "dropped" and result.reason == "face_lost"
    assert detector.frames == 8 and result.n_frames == 8
    assert not result.valid[3:].any()


class FailingDetector:
    def detect(self, image):
        raise RuntimeError("model crashed")


def test_batch_records_reasons_and_never_raises(tmp_path):
    good = _square_video(tmp_path / "good.avi", [(60.0 + t, 80.0) for t in range(12)])
    empty = _square_video(tmp_path / "empty.avi", [None] * 12)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    missing = tmp_path / "missing.mp4"
    seen = []
    results = detect_videos([good, empty, corrupt, missing], SquareDetector(), on_result=seen.append)
    assert [(r.status, r.reason) for r in results] == [
        ("ok", ""),
        ("dropped", "no_face"),
        ("skipped", "unreadable"),
        ("skipped", "missing"),
    ]
    assert seen == results
    assert "corrupt.mp4" in results[2].message
    crashed = detect_videos([good], FailingDetector())[0]
    assert (crashed.status, crashed.reason) == ("skipped", "error") and "model crashed" in crashed.message
    counts = summarize(results)
    assert (counts["ok"], counts["dropped"], counts["skipped"]) == (1, 1, 2)
    assert counts["fraction_dropped"] == 0.5
    assert counts["reasons"] == {"no_face": 1, "unreadable": 1, "missing": 1}


# --- real clips with dlib ------------------------------------------------------------------------


class CachedDetector:
    """Memoises another detector by frame content, so one clip can be re-tracked cheaply."""

    def __init__(self, detector):
        self.detector = detector
        self.cache = {}

    def detect(self, image):
        key = hashlib.sha1(image.tobytes()).hexdigest()
        if key not in self.cache:
            self.cache[key] = self.detector.detect(image)
        return self.cache[key]


@pytest.fixture(scope="module")
def dlib_detector():
    pytest.importorskip("dlib")
    from fitting.detection import dlib_predictor_path

    try:
        dlib_predictor_path()
    except (FileNotFoundError, ImportError) as error:
        pytest.skip(f"no dlib 68-point model: {error}")
    from fitting.detection import DlibDetector

    # Searching a ≤ 640 px copy keeps HOG at ≈ 0.2 s a frame on the CI machine; the
    # faces of these clips stay above its ≈ 40 px limit (crowd_walking excepted).
    return DlibDetector(upsample=1, max_detection_side=640)


@pytest.fixture(scope="module")
def videos(shared_data):
    folder = shared_data / "videos"
    if not (folder / "no_face.mp4").is_file():
        pytest.skip(f"videos not found in {folder}")
    return folder


def test_no_face_video_is_flagged(dlib_detector, videos):
    result = detect_video(videos / "no_face.mp4", dlib_detector, stride=7)
    assert result.status == "dropped" and result.reason == "no_face"
    assert result.n_frames == 5 and not result.valid.any()  # stopped after K frames


def test_face_that_leaves_drops_the_clip_before_f_but_not_after(dlib_detector, videos):
    # face_then_noface.mp4: a face in frames 0–71, a cartoon title from 72 on.
    detector = CachedDetector(dlib_detector)
    path = videos / "face_then_noface.mp4"
    dropped = detect_video(path, detector, stride=12)
    assert dropped.status == "dropped" and dropped.reason == "face_lost"
    assert dropped.frame_indices[dropped.valid].tolist() == [0, 12, 24, 36, 48, 60]
    assert dropped.track.end_frame == 6  # the 7th processed frame, file frame 72
    kept = detect_video(path, detector, stride=12, tracking=TrackingConfig(min_tracked_frames=6))
    assert kept.status == "ok" and "ended" in kept.message
    assert kept.valid.tolist() == [True] * 6 + [False] * 5
    # Landmarks lie on the face: inside the frame and inside the tracked box.
    box = kept.track.boxes[0]
    points = kept.landmarks[0]
    assert (points[:, 0] > box[0] - 20).all() and (points[:, 0] < box[2] + 20).all()


@pytest.mark.slow
def test_every_real_clip_runs_through_detection_and_cleaning(dlib_detector, videos):
    from fitting.detection import DlibDetector

    paths = sorted(videos.glob("*.mp4"))
    assert len(paths) == 14
    # The crowd's faces are 37–91 px in 1280×720 frames: search them at full size.
    full_size = DlibDetector(upsample=1, max_detection_side=None)
    results = {}
    for path in paths:
        detector = full_size if path.name == "crowd_walking.mp4" else dlib_detector
        stride = 2 if path.name == "crowd_walking.mp4" else 4
        results[path.name] = detect_video(path, detector, stride=stride, max_frames=6)
    assert (results["no_face.mp4"].status, results["no_face.mp4"].reason) == ("dropped", "no_face")
    for name, result in results.items():
        if name == "no_face.mp4":
            continue
        assert result.status == "ok", f"{name}: {result.message}"
        assert result.valid.mean() >= 5 / 6, name
        height, width = result.info.height, result.info.width
        points = result.landmarks[result.valid]
        assert ((points >= -20) & (points <= np.array([width, height]) + 20)).all(), name
    crowd = results["crowd_walking.mp4"].track
    assert crowd.face_counts.max() >= 2  # several people, one followed
    centres = 0.5 * (crowd.boxes[crowd.tracked, :2] + crowd.boxes[crowd.tracked, 2:])
    widths = crowd.boxes[crowd.tracked, 2] - crowd.boxes[crowd.tracked, 0]
    assert (np.linalg.norm(np.diff(centres, axis=0), axis=1) <= 0.5 * widths[:-1]).all()
