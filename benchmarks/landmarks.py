"""Landmark accuracy and speed of each available detector backend on the shared 300-W photos.

For every image of ``$DEEPEXP3D_DATA/landmark-images`` (lfpw-train, helen-train,
menpo) the backend detects faces; the detection whose box contains the centre of
the ground-truth points (the nearest one when several do) is scored. A face counts
as detected when such a detection exists. Errors:

* NME = mean point-to-point distance over the 68 points / outer-eye-corner
  distance of the ground truth (iBUG points 37 and 46, 1-based) — the 300-W
  normalisation; NME-51 the same over the inner points 18–68;
* ms/image = wall time of ``detect`` (face search + landmarks) per image, image
  decoding excluded.

Backends: ``dlib`` (HOG + 68-point predictor, upsample 0 and 1) when dlib and
face_recognition_models are installed; ``face_alignment`` when the package is
installed and its weights can be fetched (they download at run time, so offline it
prints an "unavailable" line with the reason).

A ``landmarks_video`` line per setting gives the time per frame of the whole video
path (decode, detect, track, smooth) on the first 60 frames of the 640×360
reference clip ``videos/WolfgangLanger_Pexels.mp4``.

Run: ``python benchmarks/landmarks.py [--limit N]`` (prints JSON lines: one per
detector setting and subset, then ``"subset": "all"``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import emit, machine  # noqa: E402

from fitting.detection import DlibDetector, FaceAlignmentDetector, FaceDetection  # noqa: E402
from fitting.media import read_image  # noqa: E402
from fitting.pts import read_pts  # noqa: E402
from morphable.paths import data_dir  # noqa: E402

OUTER_EYE_CORNERS = (36, 45)
INNER_POINTS = slice(17, 68)
SUBSETS = ("lfpw-train", "helen-train", "menpo")


def matched_face(detection: FaceDetection, truth: np.ndarray) -> int:
    """Index of the detection whose box contains the truth's centre (nearest box centre), or -1."""
    if detection.n_faces == 0:
        return -1
    centre = 0.5 * (truth.min(axis=0) + truth.max(axis=0))
    boxes = detection.boxes
    inside = (
        (boxes[:, 0] <= centre[0])
        & (centre[0] <= boxes[:, 2])
        & (boxes[:, 1] <= centre[1])
        & (centre[1] <= boxes[:, 3])
    )
    if not inside.any():
        return -1
    distances = np.linalg.norm(0.5 * (boxes[:, :2] + boxes[:, 2:]) - centre, axis=1)
    distances[~inside] = np.inf
    return int(np.argmin(distances))


def normalised_errors(points: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(NME over 68 points, NME over the 51 inner points), both / outer-eye-corner distance."""
    distances = np.linalg.norm(points - truth, axis=1)
    interocular = np.linalg.norm(truth[OUTER_EYE_CORNERS[0]] - truth[OUTER_EYE_CORNERS[1]])
    return float(distances.mean() / interocular), float(distances[INNER_POINTS].mean() / interocular)


def load_pairs(root: Path, limit: int | None) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    pairs = []
    for subset in SUBSETS:
        files = sorted(p for p in (root / subset).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        for image_path in files[:limit]:
            pairs.append((subset, image_path.name, read_image(image_path), read_pts(image_path.with_suffix(".pts"))))
    return pairs


def summary(rows: list[dict]) -> dict:
    detected = [row for row in rows if row["detected"]]
    nme = np.array([row["nme"] for row in detected])
    nme51 = np.array([row["nme51"] for row in detected])
    return {
        "images": len(rows),
        "detected": len(detected),
        "detection_rate": len(detected) / len(rows) if rows else 0.0,
        "nme_mean": float(nme.mean()) if nme.size else None,
        "nme_median": float(np.median(nme)) if nme.size else None,
        "nme51_mean": float(nme51.mean()) if nme51.size else None,
        "ms_per_image_mean": float(np.mean([row["ms"] for row in rows])) if rows else None,
        "ms_per_image_median": float(np.median([row["ms"] for row in rows])) if rows else None,
    }


def run_backend(name: str, settings: dict, detector, pairs, info: dict) -> None:
    detector.detect(pairs[0][2])  # warm-up: first-call allocations are not per-image cost
    rows = []
    for subset, image_name, image, truth in pairs:
        start = time.perf_counter()
        detection = detector.detect(image)
        elapsed_ms = 1000.0 * (time.perf_counter() - start)
        index = matched_face(detection, truth)
        row = {"subset": subset, "image": image_name, "detected": index >= 0, "ms": elapsed_ms}
        if index >= 0:
            row["nme"], row["nme51"] = normalised_errors(detection.landmarks[index], truth)
        rows.append(row)
    for subset in (*SUBSETS, "all"):
        selected = [row for row in rows if subset == "all" or row["subset"] == subset]
        emit(
            {"benchmark": "landmarks_nme", "detector": name, **settings, "subset": subset, **summary(selected), **info}
        )


def run_video(name: str, settings: dict, detector, info: dict, frames: int = 60) -> None:
    """Frames per second of detection + tracking + smoothing on the reference clip."""
    from fitting.landmark_pipeline import detect_video

    path = data_dir() / "videos" / "WolfgangLanger_Pexels.mp4"
    if not path.is_file():
        return
    result = detect_video(path, detector, max_frames=frames)
    emit(
        {
            "benchmark": "landmarks_video",
            "detector": name,
            **settings,
            "video": path.name,
            "frames": result.n_frames,
            "status": result.status,
            "valid_fraction": float(result.valid.mean()) if result.n_frames else 0.0,
            "ms_per_frame": 1000.0 * result.seconds / max(result.n_frames, 1),
            **info,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per subset")
    args = parser.parse_args()
    root = data_dir() / "landmark-images"
    if not root.is_dir():
        sys.exit(f"landmark images not found at {root} (set DEEPEXP3D_DATA)")
    info = machine()
    pairs = load_pairs(root, args.limit)

    try:
        import dlib

        info_dlib = {**info, "dlib": dlib.__version__}
        for upsample in (1, 0):
            detector = DlibDetector(upsample=upsample, max_detection_side=None)
            run_backend("dlib", {"upsample": upsample}, detector, pairs, info_dlib)
            run_video("dlib", {"upsample": upsample}, DlibDetector(upsample=upsample), info_dlib)
    except ImportError as error:
        emit({"benchmark": "landmarks_nme", "detector": "dlib", "available": False, "reason": str(error), **info})

    for mode in ("2d", "2.5d"):
        try:
            detector = FaceAlignmentDetector(mode, device="cpu")
        except Exception as error:  # noqa: BLE001 — missing package or weights that cannot download here
            emit(
                {
                    "benchmark": "landmarks_nme",
                    "detector": "face_alignment",
                    "mode": mode,
                    "available": False,
                    "reason": f"{type(error).__name__}: {error}"[:300],
                    **info,
                }
            )
            continue
        run_backend("face_alignment", {"mode": mode}, detector, pairs, info)
        run_video("face_alignment", {"mode": mode}, detector, info)


if __name__ == "__main__":
    main()
