"""False-detection removal by tracking one face through a video (paper §III-B, step 1).

The paper keeps, in every frame, the detection of the face found in the first
frame: a detection is that face if its box centre lies within half the box width
of the face's previous location, and a video is pruned when the face is lost for
K = 5 consecutive frames before F = 2000 frames have been tracked. Here:

* The face to follow is the first frame's **largest** detection (the talking head
  fills the frame; detector false positives are usually small), or its most
  confident one (``initial_face="most_confident"``).
* "Previous location" is the centre of the last box kept, so after a short loss
  the face is looked for where it was last seen. Among several detections inside
  the gate the nearest is kept; the others are false or other faces and ignored.
* Frames before the first detection count as lost: no face in the first K frames
  drops the video with reason ``"no_face"``.
* A loss of K frames before F tracked frames drops the video (reason
  ``"face_lost"``). A loss of K frames *after* F tracked frames keeps the video
  but ends the track there: every later frame is marked lost, since a face found
  after a long loss may be someone else and the whole-video fit assumes one
  identity (the paper does not say what it did there).

K and F count the frames given to the tracker: with a frame stride they count
sampled frames. The tracker is a pure step function (:func:`track_step`) over a
frozen :class:`TrackState`, so a video can be processed as a stream and detection
stopped as soon as the outcome is known; :func:`track_faces` runs it over a
sequence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Literal

import numpy as np
from flax import struct

from fitting.detection import N_LANDMARKS, FaceDetection

__all__ = ["TrackingConfig", "TrackState", "TrackResult", "track_step", "track_faces", "box_centres"]

InitialFace = Literal["largest", "most_confident"]
Phase = Literal["searching", "tracking", "ended", "dropped"]


@struct.dataclass(frozen=True)
class TrackingConfig:
    """Rules of :func:`track_faces` (paper defaults).

    Attributes:
      max_lost_frames: K, consecutive frames without the face that end the track
        (drop the video before ``min_tracked_frames``). Default 5.
      min_tracked_frames: F, tracked frames after which a K-frame loss no longer
        drops the video. Default 2000.
      margin: a detection is the tracked face if its box centre is within
        ``margin × width`` of the previous box centre (width of the previous box).
        Default 0.5.
      initial_face: which first-frame detection to follow: ``"largest"`` box area
        (default) or ``"most_confident"`` (highest score).
    """

    max_lost_frames: int = struct.field(pytree_node=False, default=5)
    min_tracked_frames: int = struct.field(pytree_node=False, default=2000)
    margin: float = struct.field(pytree_node=False, default=0.5)
    initial_face: InitialFace = struct.field(pytree_node=False, default="largest")

    def validate(self) -> TrackingConfig:
        """Raise ``ValueError`` naming the offending field; return ``self`` when consistent."""
        for name in ("max_lost_frames", "min_tracked_frames"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"TrackingConfig.{name}: must be a positive int, got {value!r}")
        if not float(self.margin) > 0:
            raise ValueError(f"TrackingConfig.margin: must be positive, got {self.margin!r}")
        if self.initial_face not in ("largest", "most_confident"):
            raise ValueError(
                f"TrackingConfig.initial_face: expected 'largest' or 'most_confident', got {self.initial_face!r}"
            )
        return self


@dataclasses.dataclass(frozen=True)
class TrackState:
    """Where the tracker stands after some frames (immutable; see :func:`track_step`).

    Attributes:
      frame: frames consumed so far.
      box: last kept box ``(x0, y0, x1, y1)`` pixels, ``None`` before the first.
      tracked_frames: frames in which the face was kept.
      lost_streak: consecutive frames, up to now, without the face.
      phase: ``"searching"`` (no face yet), ``"tracking"``, ``"ended"`` (lost for K
        frames after F tracked: kept, no more tracking) or ``"dropped"``.
      reason: ``""``, ``"no_face"`` or ``"face_lost"`` (why it was dropped).
      message: a sentence saying what happened, for logs and reports.
      end_frame: first lost frame of the loss that dropped or ended the track, else -1.
    """

    frame: int = 0
    box: tuple[float, float, float, float] | None = None
    tracked_frames: int = 0
    lost_streak: int = 0
    phase: Phase = "searching"
    reason: str = ""
    message: str = ""
    end_frame: int = -1


def box_centres(boxes) -> np.ndarray:
    """Centres of boxes.

    Args:
      boxes: ``(..., 4)`` ``x0, y0, x1, y1`` pixels.

    Returns:
      ``(..., 2)`` centres, pixels.

    Examples:
      >>> box_centres(np.array([[0, 0, 10, 20]])).tolist()
      [[5.0, 10.0]]
    """
    boxes = np.asarray(boxes, np.float64)
    return 0.5 * (boxes[..., :2] + boxes[..., 2:])


def _initial_choice(detection: FaceDetection, rule: InitialFace) -> int:
    if rule == "most_confident":
        return int(np.argmax(detection.scores))
    sizes = np.prod(np.clip(detection.boxes[:, 2:] - detection.boxes[:, :2], 0, None), axis=1)
    return int(np.argmax(sizes))


def _gated_choice(detection: FaceDetection, previous_box, margin: float) -> int:
    if detection.n_faces == 0:
        return -1
    previous_box = np.asarray(previous_box, np.float64)
    distances = np.linalg.norm(box_centres(detection.boxes) - box_centres(previous_box), axis=1)
    nearest = int(np.argmin(distances))
    width = float(previous_box[2] - previous_box[0])
    return nearest if distances[nearest] <= margin * width else -1


def track_step(state: TrackState, detection: FaceDetection, config: TrackingConfig) -> tuple[TrackState, int]:
    """Advance the tracker by one frame.

    Args:
      state: the state after the previous frames (``TrackState()`` to start).
      detection: this frame's faces.
      config: the rules.

    Returns:
      ``(new_state, chosen)``: ``chosen`` is the index of the kept detection in
      ``detection`` or ``-1`` when the face is lost in this frame (or the track has
      ended or been dropped).

    Examples:
      >>> face = FaceDetection.create([[0, 0, 10, 10]], np.zeros((1, 68, 2)), [1.0])
      >>> state, chosen = track_step(TrackState(), face, TrackingConfig())
      >>> state.phase, chosen
      ('tracking', 0)
    """
    frame = state.frame
    advanced = dataclasses.replace(state, frame=frame + 1)
    if state.phase in ("ended", "dropped"):
        return advanced, -1
    if state.phase == "searching":
        chosen = _initial_choice(detection, config.initial_face) if detection.n_faces else -1
    else:
        chosen = _gated_choice(detection, state.box, config.margin)
    if chosen >= 0:
        box = tuple(float(v) for v in detection.boxes[chosen])
        return (
            dataclasses.replace(
                advanced, box=box, tracked_frames=state.tracked_frames + 1, lost_streak=0, phase="tracking"
            ),
            chosen,
        )
    lost = state.lost_streak + 1
    advanced = dataclasses.replace(advanced, lost_streak=lost)
    if lost < config.max_lost_frames:
        return advanced, -1
    first_lost = frame - lost + 1
    if state.phase == "searching":
        return (
            dataclasses.replace(
                advanced,
                phase="dropped",
                reason="no_face",
                message=f"no face detected in the first {lost} frames",
                end_frame=first_lost,
            ),
            -1,
        )
    if state.tracked_frames < config.min_tracked_frames:
        return (
            dataclasses.replace(
                advanced,
                phase="dropped",
                reason="face_lost",
                message=(
                    f"face lost for {lost} consecutive frames from frame {first_lost}, after "
                    f"{state.tracked_frames} tracked frames (< {config.min_tracked_frames})"
                ),
                end_frame=first_lost,
            ),
            -1,
        )
    return (
        dataclasses.replace(
            advanced,
            phase="ended",
            message=(
                f"track ended at frame {first_lost} (face lost for {lost} frames) after "
                f"{state.tracked_frames} tracked frames; later frames are not used"
            ),
            end_frame=first_lost,
        ),
        -1,
    )


@struct.dataclass
class TrackResult:
    """The tracked face over ``T`` consumed frames.

    Attributes:
      landmarks: ``(T, 68, 2) float32`` the tracked face's landmarks, 0-based
        pixels; NaN in frames where it is lost.
      boxes: ``(T, 4) float32`` its box, NaN where lost.
      scores: ``(T,) float32`` its detector score, NaN where lost.
      tracked: ``(T,) bool`` the face was kept in that frame.
      detection_index: ``(T,) int32`` index of the kept detection in that frame's
        :class:`FaceDetection`, -1 where lost.
      face_counts: ``(T,) int32`` faces the detector found in that frame.
      status: ``"ok"`` or ``"dropped"``.
      reason: ``""`` when ok, else ``"no_face"`` or ``"face_lost"``.
      message: what happened, in words.
      end_frame: first lost frame of the loss that dropped or ended the track, -1 if none.
    """

    landmarks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    tracked: np.ndarray
    detection_index: np.ndarray
    face_counts: np.ndarray
    status: str = struct.field(pytree_node=False, default="ok")
    reason: str = struct.field(pytree_node=False, default="")
    message: str = struct.field(pytree_node=False, default="")
    end_frame: int = struct.field(pytree_node=False, default=-1)

    @property
    def n_frames(self) -> int:
        """Frames consumed, ``T``."""
        return int(self.tracked.shape[0])

    @property
    def tracked_frames(self) -> int:
        """Frames in which the face was kept."""
        return int(np.count_nonzero(self.tracked))

    @property
    def lost_frames(self) -> int:
        """Frames without the face (``T − tracked_frames``)."""
        return self.n_frames - self.tracked_frames

    @property
    def ignored_detections(self) -> int:
        """Detections not kept: false or other faces, and everything in lost frames."""
        return int(self.face_counts.sum()) - self.tracked_frames

    @property
    def longest_gap(self) -> int:
        """Longest run of lost frames between two tracked frames (leading/trailing runs excluded)."""
        indices = np.flatnonzero(self.tracked)
        return int(np.max(np.diff(indices)) - 1) if indices.size > 1 else 0


def track_faces(
    detections: Iterable[FaceDetection], config: TrackingConfig = TrackingConfig(), *, stop_early: bool = True
) -> TrackResult:
    """Follow the first frame's face through a sequence of per-frame detections.

    Args:
      detections: one :class:`FaceDetection` per frame, in order; any iterable
        (a generator that detects lazily stops being pulled when ``stop_early``).
      config: the tracking rules.
      stop_early: stop consuming frames once the video is dropped or the track has
        ended (nothing later can change the outcome), so ``T`` may be less than
        the number of frames.

    Returns:
      :class:`TrackResult` over the ``T`` frames consumed.

    Examples:
      >>> def face_at(x):
      ...     return FaceDetection.create([[x, 0, x + 10, 10]], np.zeros((1, 68, 2)), [1.0])
      >>> frames = [face_at(0), face_at(2), face_at(40), face_at(4)]  # frame 2 jumps away
      >>> result = track_faces(frames)
      >>> result.tracked.tolist(), result.status
      ([True, True, False, True], 'ok')
    """
    config.validate()
    state = TrackState()
    landmarks, boxes, scores, chosen_indices, counts = [], [], [], [], []
    lost_landmarks = np.full((N_LANDMARKS, 2), np.nan, np.float32)
    lost_box = np.full(4, np.nan, np.float32)
    for detection in detections:
        state, chosen = track_step(state, detection, config)
        counts.append(detection.n_faces)
        chosen_indices.append(chosen)
        if chosen >= 0:
            landmarks.append(detection.landmarks[chosen])
            boxes.append(detection.boxes[chosen])
            scores.append(detection.scores[chosen])
        else:
            landmarks.append(lost_landmarks)
            boxes.append(lost_box)
            scores.append(np.nan)
        if stop_early and state.phase in ("dropped", "ended"):
            break
    if state.phase == "searching":
        state = dataclasses.replace(
            state,
            phase="dropped",
            reason="no_face",
            message=f"no face detected in {state.frame} frames" if state.frame else "no frames",
            end_frame=0,
        )
    chosen_indices = np.asarray(chosen_indices, np.int32)
    return TrackResult(
        landmarks=np.asarray(landmarks, np.float32).reshape(-1, N_LANDMARKS, 2),
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        scores=np.asarray(scores, np.float32),
        tracked=chosen_indices >= 0,
        detection_index=chosen_indices,
        face_counts=np.asarray(counts, np.int32),
        status="dropped" if state.phase == "dropped" else "ok",
        reason=state.reason,
        message=state.message or f"tracked {state.tracked_frames} of {state.frame} frames",
        end_frame=state.end_frame,
    )
