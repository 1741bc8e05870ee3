"""Single-image landmark fitting: eos-py vs ``fitting.image.fit_image`` on SFM-3448, same landmarks.

Both fit the Surrey Face Model (63 identity components, 6 expression
blendshapes) to the 68 ground-truth landmarks of the LFPW training photos in
``$DEEPEXP3D_DATA/landmark-images/lfpw-train``, measured in the same run:

* ``setting = "contour"``: eos's ``fit_shape_and_pose`` with contour and
  occluding-edge fitting (5 iterations, λ_identity = 30, its defaults) vs ours
  with contour fitting (the default :class:`fitting.config.ImageFitConfig`);
* ``setting = "landmarks_only"``: eos's overload without contour/edge fitting vs
  ours with ``contour_fitting=False``.

Per setting one JSON line with: eos ms/image (median over the images, one call
each), ours ms/image for one image per call (median of repeated calls after
compilation) and batched (one jitted call on ``--batch`` images, best of
``--repeats``), the ratios eos/ours, and the accuracy of both on the same images:
mean RMSE (pixels) over the 50 landmarks SFM maps, and over those plus the 16
contour landmarks measured to the nearest projected contour candidate of their
side (the eos-sfm README's measure). eos runs single-threaded, as it is; JAX uses
the machine's threads.

Run: ``python benchmarks/fit_image.py [--images N] [--batch B] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import best_time, emit, machine  # noqa: E402

import jax  # noqa: E402

from fitting.config import ImageFitConfig  # noqa: E402
from fitting.image import fit_image  # noqa: E402
from fitting.pts import read_pts  # noqa: E402
from morphable.io import load_sfm  # noqa: E402
from morphable.paths import data_dir  # noqa: E402


def eos_fitter(directory: Path):
    """eos-py's SFM fit as the eos-sfm README describes; returns ``fit(landmarks, w, h, contour)``."""
    import eos

    shape_model = eos.morphablemodel.load_model(str(directory / "sfm_shape_3448.bin"))
    blendshapes = eos.morphablemodel.load_blendshapes(str(directory / "expression_blendshapes_3448.bin"))
    model = eos.morphablemodel.MorphableModel(
        shape_model.get_shape_model(),
        blendshapes,
        color_model=eos.morphablemodel.PcaModel(),
        vertex_definitions=None,
        texture_coordinates=shape_model.get_texture_coordinates(),
    )
    mapping = str(directory / "ibug_to_sfm.txt")
    mapper = eos.core.LandmarkMapper(mapping)
    edge_topology = eos.morphablemodel.load_edge_topology(str(directory / "sfm_3448_edge_topology.json"))
    contour_landmarks = eos.fitting.ContourLandmarks.load(mapping)
    model_contour = eos.fitting.ModelContour.load(str(directory / "sfm_model_contours.json"))

    def fit(landmarks2d: np.ndarray, width: int, height: int, contour: bool):
        landmarks = [eos.core.Landmark(str(k + 1), [float(x), float(y)]) for k, (x, y) in enumerate(landmarks2d)]
        if contour:
            mesh, pose, _, _ = eos.fitting.fit_shape_and_pose(
                model, landmarks, mapper, width, height, edge_topology, contour_landmarks, model_contour
            )
        else:
            mesh, pose, _, _ = eos.fitting.fit_shape_and_pose(model, landmarks, mapper, width, height)
        return mesh, pose

    def projected(mesh, pose, width: int, height: int) -> np.ndarray:
        affine = np.asarray(eos.fitting.get_3x4_affine_camera_matrix(pose, width, height))
        return np.asarray(mesh.vertices) @ affine[:2, :3].T + affine[:2, 3]

    return fit, projected


def landmark_errors(model, projected: np.ndarray, landmarks2d: np.ndarray) -> tuple[float, float]:
    """RMSE (px) over the mapped landmarks, and over those plus the 16 contour landmarks (nearest candidate)."""
    fixed = np.asarray(model.landmark_indices)
    mapped = fixed >= 0
    squared = np.sum((projected[fixed[mapped]] - landmarks2d[mapped]) ** 2, -1)
    contour = []
    for ids, candidates in ((range(0, 8), model.contour_right), (range(9, 17), model.contour_left)):
        for k in ids:
            contour.append(np.min(np.sum((projected[np.asarray(candidates)] - landmarks2d[k]) ** 2, -1)))
    with_contour = np.sqrt((squared.sum() + np.sum(contour)) / (squared.size + len(contour)))
    return float(np.sqrt(squared.mean())), float(with_contour)


def our_projections(model, result) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    identity = np.asarray(result.identity) * np.asarray(model.identity_std)
    expression = np.asarray(result.expression) * np.asarray(model.expression_std)
    vertices = (
        np.asarray(model.mean)
        + np.einsum("vcn,bn->bvc", np.asarray(model.identity_basis), identity)
        + np.einsum("vcn,bn->bvc", np.asarray(model.expression_basis), expression)
    )
    matrices = Rotation.from_rotvec(np.asarray(result.camera.rotation, np.float64)).as_matrix()
    rotated = np.einsum("bij,bvj->bvi", matrices, vertices)
    scale = np.asarray(result.camera.scale)[:, None, None]
    return scale * rotated[..., :2] * np.array([1.0, -1.0]) + np.asarray(result.camera.translation)[:, None, :]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=40, help="LFPW images fitted by both (accuracy, eos timing)")
    parser.add_argument("--batch", type=int, default=256, help="images per batched call of ours")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    root = data_dir()
    folder = root / "landmark-images" / "lfpw-train"
    files = sorted(folder.glob("*.pts"))[: args.images]
    if not files:
        raise SystemExit(f"no .pts files in {folder} (set DEEPEXP3D_DATA)")
    sizes = {}
    import csv

    with open(root / "landmark-images" / "index.csv") as handle:
        for row in csv.DictReader(handle):
            sizes[row["pts"]] = (int(row["width"]), int(row["height"]))
    landmarks2d = np.stack([read_pts(path) for path in files]).astype(np.float32)
    model = load_sfm(root / "eos-sfm")
    eos_fit, eos_projected = eos_fitter(root / "eos-sfm")
    batch = np.resize(landmarks2d, (args.batch, 68, 2))
    base = {
        "benchmark": "fit_image",
        "model": "sfm_3448 (63 identity, 6 blendshapes)",
        "images": len(files),
        "batch": args.batch,
        **machine(),
        "eos_py": metadata.version("eos-py"),
    }

    for setting, config in (
        ("contour", ImageFitConfig()),
        ("landmarks_only", ImageFitConfig(contour_fitting=False)),
    ):
        contour = setting == "contour"
        eos_times, eos_errors = [], []
        for path, points in zip(files, landmarks2d):
            width, height = sizes[path.name]
            start = time.perf_counter()
            mesh, pose = eos_fit(points, width, height, contour)
            eos_times.append(time.perf_counter() - start)
            eos_errors.append(landmark_errors(model, eos_projected(mesh, pose, width, height), points))

        start = time.perf_counter()
        jax.block_until_ready(fit_image(model, landmarks2d[0], config=config))
        compile_single = time.perf_counter() - start
        single_times = []
        for points in landmarks2d:
            start = time.perf_counter()
            jax.block_until_ready(fit_image(model, points, config=config))
            single_times.append(time.perf_counter() - start)

        start = time.perf_counter()
        jax.block_until_ready(fit_image(model, batch, config=config))
        compile_batched = time.perf_counter() - start
        batched_seconds = best_time(
            lambda: fit_image(model, batch, config=config), repeats=args.repeats, block=jax.block_until_ready
        )

        result = fit_image(model, landmarks2d, config=config)
        ours_errors = [landmark_errors(model, p, y) for p, y in zip(our_projections(model, result), landmarks2d)]
        eos_ms = 1e3 * statistics.median(eos_times)
        single_ms = 1e3 * statistics.median(single_times)
        batched_ms = 1e3 * batched_seconds / args.batch
        emit(
            {
                **base,
                "setting": setting,
                "eos_ms_per_image": round(eos_ms, 3),
                "ours_single_ms_per_image": round(single_ms, 3),
                "ours_batched_ms_per_image": round(batched_ms, 4),
                "ratio_single": round(eos_ms / single_ms, 2),
                "ratio_batched": round(eos_ms / batched_ms, 2),
                "ours_compile_s": {"single": round(compile_single, 2), "batched": round(compile_batched, 2)},
                "eos_rmse_mapped_px": round(float(np.mean([e[0] for e in eos_errors])), 3),
                "ours_rmse_mapped_px": round(float(np.mean([e[0] for e in ours_errors])), 3),
                "eos_rmse_with_contour_px": round(float(np.mean([e[1] for e in eos_errors])), 3),
                "ours_rmse_with_contour_px": round(float(np.mean([e[1] for e in ours_errors])), 3),
                "ours_valid": int(np.sum(np.asarray(result.valid))),
                "ours_mean_iterations": round(float(np.mean(np.asarray(result.iterations))), 2),
            }
        )


if __name__ == "__main__":
    main()
