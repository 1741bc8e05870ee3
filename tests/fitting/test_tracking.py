"""Tracking the first frame's face on synthetic detection sequences (paper §III-B step 1).

Each synthetic face carries its identity in its landmarks (every point equals the
face's id + 1000·frame), so a test can tell which face the tracker kept.
"""

from __future__ import annotations

import numpy as np
import pytest

from fitting.detection import FaceDetection
from fitting.tracking import TrackingConfig, TrackState, track_faces, track_step

WIDTH = 100.0  # box width of the tracked face, pixels


def face(face_id, x, y, width=WIDTH, score=1.0):
    """One face: a box centred on (x, y) and landmarks that encode the face id."""
    box = [x - width / 2, y - width / 2, x + width / 2, y + width / 2]
    return box, np.full((68, 2), float(face_id)), score


def frame(*faces):
    if not faces:
        return FaceDetection.empty()
    boxes, landmarks, scores = zip(*faces)
    return FaceDetection.create(np.array(boxes), np.array(landmarks), np.array(scores))


def kept_ids(result):
    """The id of the face kept in each frame (-1 where lost)."""
    ids = result.landmarks[:, 0, 0]
    return np.where(result.tracked, ids, -1).astype(int).tolist()


def walk(frames, start=(300.0, 200.0), step=(4.0, 1.0)):
    """Face 1 walking steadily: its centre in each of ``frames`` frames."""
    return [(start[0] + step[0] * t, start[1] + step[1] * t) for t in range(frames)]


def test_paper_numbers_are_the_defaults():
    config = TrackingConfig()
    assert (config.max_lost_frames, config.min_tracked_frames, config.margin) == (5, 2000, 0.5)


def test_false_face_elsewhere_is_ignored_even_when_more_confident():
    path = walk(30)
    frames = []
    for t, (x, y) in enumerate(path):
        faces = [face(1, x, y, score=0.5)]
        if t % 3 == 1:  # a false face (e.g. a HOG hit on the background), more confident
            faces.append(face(2, 900.0, 500.0, width=60, score=3.0))
        frames.append(frame(*faces))
    result = track_faces(frames)
    assert result.status == "ok" and result.reason == ""
    assert kept_ids(result) == [1] * 30
    assert result.ignored_detections == 10
    np.testing.assert_array_equal(result.face_counts, [2 if t % 3 == 1 else 1 for t in range(30)])


def test_second_face_next_to_the_tracked_one_is_not_taken():
    # Another person half a box width beside the tracked face, nearer than the gate,
    # but the tracked face is nearer still: the nearest detection wins, not the most
    # confident one (listed first).
    frames = [frame(face(1, x, y), face(2, x + 45.0, y, width=80, score=2.0)) for x, y in walk(20)]
    result = track_faces(frames)
    assert kept_ids(result) == [1] * 20


def test_first_face_is_the_largest_or_the_most_confident():
    first = frame(face(1, 200, 200, width=150, score=0.2), face(2, 600, 200, width=50, score=2.0))
    later = [first] * 4
    assert kept_ids(track_faces([first, *later])) == [1] * 5
    confident = track_faces([first, *later], TrackingConfig(initial_face="most_confident"))
    assert kept_ids(confident) == [2] * 5


def test_jump_beyond_half_a_box_width_is_lost_and_within_is_kept():
    frames = [frame(face(1, 300, 200))]
    frames.append(frame(face(1, 300 + 49.0, 200)))  # within 0.5 × 100 px: kept
    frames.append(frame(face(3, 349 + 51.0, 200)))  # 51 px from the last kept centre: lost
    frames.append(frame(face(1, 349 + 30.0, 200 + 30.0)))  # 42.4 px from the last kept one: kept
    result = track_faces(frames)
    assert kept_ids(result) == [1, 1, -1, 1]
    assert result.status == "ok" and result.longest_gap == 1


def test_margin_is_configurable():
    frames = [frame(face(1, 300, 200)), frame(face(1, 370, 200))]
    assert kept_ids(track_faces(frames)) == [1, -1]
    assert kept_ids(track_faces(frames, TrackingConfig(margin=0.75))) == [1, 1]


def test_gate_uses_the_last_kept_location_through_a_short_gap():
    path = walk(12)
    frames = [frame(face(1, *path[t])) if t not in (4, 5, 6) else frame() for t in range(12)]
    # During the gap a false face appears where the tracked one is not.
    frames[5] = frame(face(2, 700, 600))
    result = track_faces(frames)
    assert kept_ids(result) == [1, 1, 1, 1, -1, -1, -1, 1, 1, 1, 1, 1]
    assert result.status == "ok" and result.longest_gap == 3 and result.lost_frames == 3


def test_loss_of_k_frames_before_f_drops_the_video():
    path = walk(40)
    frames = [frame() if 10 <= t < 15 else frame(face(1, *path[t])) for t in range(40)]
    result = track_faces(frames)
    assert result.status == "dropped" and result.reason == "face_lost"
    assert result.end_frame == 10
    assert "frame 10" in result.message and "10 tracked frames" in result.message
    assert result.n_frames == 15  # stopped consuming at the drop
    # Four lost frames (K − 1) are not enough.
    frames = [frame() if 10 <= t < 14 else frame(face(1, *path[t])) for t in range(40)]
    assert track_faces(frames).status == "ok"


def test_loss_after_f_tracked_frames_keeps_the_video_and_ends_the_track():
    path = walk(40)
    frames = [frame() if 20 <= t < 26 else frame(face(1, *path[t])) for t in range(40)]
    config = TrackingConfig(min_tracked_frames=20)
    result = track_faces(frames, config, stop_early=False)
    assert result.status == "ok" and result.reason == ""
    assert result.end_frame == 20 and "ended" in result.message
    # The face comes back at frame 26, but after a K-frame loss it may be someone else.
    assert kept_ids(result) == [1] * 20 + [-1] * 20
    # One tracked frame fewer than F: the same loss drops the video.
    assert track_faces(frames, TrackingConfig(min_tracked_frames=21)).reason == "face_lost"


def test_face_that_leaves_the_frame_drops_a_short_video():
    path = walk(30)
    frames = [frame(face(1, *path[t])) if t < 12 else frame() for t in range(30)]
    result = track_faces(frames)
    assert result.status == "dropped" and result.reason == "face_lost" and result.end_frame == 12


def test_no_face_in_the_first_k_frames():
    result = track_faces([frame()] * 20)
    assert result.status == "dropped" and result.reason == "no_face" and result.n_frames == 5
    assert "first 5 frames" in result.message
    short = track_faces([frame()] * 3)
    assert short.status == "dropped" and short.reason == "no_face"
    assert track_faces([]).reason == "no_face"
    # A face that appears in frame K − 1 = 4 is in time.
    late = track_faces([frame()] * 4 + [frame(face(1, 300, 200))] * 6)
    assert late.status == "ok" and kept_ids(late) == [-1] * 4 + [1] * 6


def test_stop_early_stops_pulling_detections():
    pulled = []

    def detections():
        for t in range(100):
            pulled.append(t)
            yield frame(face(1, 300, 200)) if t < 3 else frame()

    result = track_faces(detections())
    assert result.reason == "face_lost" and pulled == list(range(8))


def test_lost_frames_have_nan_landmarks_and_boxes():
    result = track_faces([frame(face(1, 300, 200)), frame(), frame(face(1, 302, 200))])
    assert np.isnan(result.landmarks[1]).all() and np.isnan(result.boxes[1]).all()
    assert np.isfinite(result.landmarks[[0, 2]]).all()
    assert result.detection_index.tolist() == [0, -1, 0]


def test_step_function_is_pure():
    state = TrackState()
    detection = frame(face(1, 300, 200))
    first, _ = track_step(state, detection, TrackingConfig())
    second, _ = track_step(state, detection, TrackingConfig())
    assert state.frame == 0 and state.phase == "searching"
    assert first == second and first.box == (250.0, 150.0, 350.0, 250.0)


@pytest.mark.parametrize(
    "field, value",
    [("max_lost_frames", 0), ("min_tracked_frames", -1), ("margin", 0.0), ("initial_face", "leftmost")],
)
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        track_faces([], TrackingConfig(**{field: value}))
