"""Synthetic training data with exact targets: shaded renders of the morphable model.

Each example is a face of random identity, expression, head pose, lighting,
skin tone and background, rendered into a ``frame_size²`` "video frame" and then
aligned to the template with its 68 projected landmarks exactly as real frames
are (:func:`fitting.template.align_face`). The target is the exact expression
vector that produced the shape, so a regressor trained on these renders can be
checked against ground truth (the learning proof in
``benchmarks/regressor_learning.py``).

**Expression.** Blendshape weights ``w ∈ [0, 1]^53`` of ICT are drawn sparse
(each active with probability ``active_probability``, often mirrored left/right
as real expressions are), mapped to the paper's 28-d orthonormal space
``e = to_orthonormal · w`` (:func:`morphable.editing.orthonormal_expression_basis`)
and the face is built **from e** with the 28-d model — so the rendered shape is
exactly ``x̄ + U_id·i + U_exp·e`` and ``e`` is the exact target (the part of
``w`` outside the 28-d subspace is not rendered). ICT's face area has no
eyeballs and the iris is painted at the eye's centre, so what a component does
through gaze blendshapes (``eyeLook*``) is visible only through the eyelids —
a limit on what any regressor can learn from these renders.

**Renderer.** A small painter's-algorithm rasteriser: the visible (front-facing)
triangles of ICT's face area are sorted back to front and filled with OpenCV's
``fillConvexPoly`` (sub-pixel vertex positions), each with Lambert shading of its
face normal under one directional light plus ambient light. Dark eye and mouth
interiors are painted first, so the mesh's eye and mouth openings show them. It
is chosen over a full renderer (pyrender, nvdiffrast) to keep the dependency set
to OpenCV and to run anywhere; at ~15k visible triangles it takes ~70 ms per
frame on one CPU core. Hand-written because no maintained CPU rasteriser is in
the dependency set.

Camera: weak perspective (:class:`morphable.camera.WeakPerspectiveCamera`), so
``project`` of the shape's landmarks reproduces the stored landmarks; the stored
camera and landmarks are in crop pixels (:func:`fitting.template.warp_camera`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from fitting.shards import ShardWriter, camera_to_vector, expression_basis_id, read_shard_metadata
from fitting.template import Template, align_face, make_template, transform_points, warp_camera
from morphable.camera import WeakPerspectiveCamera
from morphable.editing import BlendshapeMapping, orthonormal_expression_basis
from morphable.model import MorphableModel

__all__ = [
    "SceneConfig",
    "FaceRenderer",
    "SyntheticFaces",
    "load_synthetic_faces",
    "write_synthetic_shards",
    "save_sample_grid",
]

# iBUG (0-based) contours of the eye openings and the inner lips.
_RIGHT_EYE = tuple(range(36, 42))
_LEFT_EYE = tuple(range(42, 48))
_INNER_MOUTH = tuple(range(60, 68))
_SUBPIXEL_BITS = 4


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Distribution of the random scenes.

    Attributes:
      frame_size: side of the rendered frame, pixels (before alignment).
      face_width: range of the width of the 68 landmarks' bounding box when
        frontal, pixels (the face's size in the frame).
      yaw_degrees, pitch_degrees, roll_degrees: head pose, uniform in ``±`` these.
      centre_jitter: shift of the face from the frame centre, fraction of the frame.
      identity_scale: std of the identity coefficients (1 = the model's prior).
      active_probability: chance each blendshape is active (weight uniform in [0, 1]).
      symmetric_probability: chance an expression is made left/right symmetric.
      ambient: range of the ambient light intensity.
      light_spread_degrees: maximum angle of the light from the viewing direction.
    """

    frame_size: int = 320
    face_width: tuple[float, float] = (120.0, 170.0)
    yaw_degrees: float = 30.0
    pitch_degrees: float = 15.0
    roll_degrees: float = 15.0
    centre_jitter: float = 0.05
    identity_scale: float = 1.0
    active_probability: float = 0.25
    symmetric_probability: float = 0.5
    ambient: tuple[float, float] = (0.25, 0.5)
    light_spread_degrees: float = 60.0


class FaceRenderer:
    """Painter's-algorithm renderer of one model's mesh (NumPy + OpenCV, no JAX).

    Args:
      model: the morphable model whose coefficients are rendered.
    """

    def __init__(self, model: MorphableModel):
        n = model.n_vertices
        self.mean = np.asarray(model.mean, np.float32)
        # One (3N, n_i + n_e) float32 matrix: a single matrix-vector product per
        # face, at half the memory traffic of float64.
        self.basis = np.ascontiguousarray(np.concatenate([
            (np.asarray(model.identity_basis) * np.asarray(model.identity_std)).reshape(n * 3, -1),
            (np.asarray(model.expression_basis) * np.asarray(model.expression_std)).reshape(n * 3, -1),
        ], axis=1), dtype=np.float32)
        self.triangles = np.asarray(model.triangles, np.int64)
        self.landmark_indices = np.asarray(model.landmark_indices, np.int64)
        if np.any(self.landmark_indices < 0):
            raise ValueError("model: every landmark needs a vertex to render landmarks exactly")

    def vertices(self, identity, expression) -> np.ndarray:
        """``(N, 3)`` vertices (model units) of ``identity (n_i,)``, ``expression (n_e,)``.

        Equal to :func:`morphable.model.shape` (float32 NumPy here).
        """
        coefficients = np.concatenate([np.asarray(identity, np.float32), np.asarray(expression, np.float32)])
        return self.mean + (self.basis @ coefficients).reshape(-1, 3)

    def render(
        self,
        vertices: np.ndarray,
        rotation: np.ndarray,
        scale: float,
        translation,
        *,
        background: np.ndarray,
        albedo=(200.0, 160.0, 140.0),
        light_direction=(0.0, 0.0, 1.0),
        ambient: float = 0.35,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Render a mesh with a weak-perspective camera over ``background``.

        Args:
          vertices: ``(N, 3)`` model units.
          rotation: ``(3, 3)`` rotation matrix (model → camera axes).
          scale: pixels per model unit.
          translation: ``(2,)`` image position of the model origin, pixels.
          background: ``(H, W, 3) uint8`` RGB; not modified.
          albedo: RGB skin colour, 0–255.
          light_direction: ``(3,)`` direction towards the light, camera axes (z to the viewer).
          ambient: ambient intensity (diffuse intensity is ``1 − ambient``).

        Returns:
          ``(image (H, W, 3) uint8 RGB, landmarks (68, 2) float64 pixels)``.
        """
        rotated = np.asarray(vertices, np.float64) @ np.asarray(rotation, np.float64).T
        # The projection of morphable.camera.project for a weak-perspective camera.
        pixels = rotated[:, :2] * np.array([scale, -scale]) + np.asarray(translation, np.float64)
        image = np.array(background, dtype=np.uint8, copy=True)
        landmarks_2d = pixels[self.landmark_indices]
        albedo = np.asarray(albedo, np.float64)
        light = np.asarray(light_direction, np.float64)
        light = light / np.linalg.norm(light)
        self._paint_interiors(image, landmarks_2d, albedo, ambient)

        corners = rotated[self.triangles]
        normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
        # Back-face culling: ICT's triangles are wound so front faces point to +z.
        visible = np.flatnonzero(normals[:, 2] > 0)
        order = visible[np.argsort(corners[visible, :, 2].mean(axis=1), kind="stable")]
        intensity = ambient + (1.0 - ambient) * np.clip(normals @ light, 0.0, 1.0)
        colours = np.clip(intensity[:, None] * albedo[None, :], 0, 255)
        points = np.round(pixels[self.triangles[order]] * (1 << _SUBPIXEL_BITS)).astype(np.int32)
        fill = cv2.fillConvexPoly
        # Plain lists: the per-triangle loop is the renderer's cost, so no NumPy
        # indexing or tuple building inside it.
        for polygon, colour in zip(list(points), colours[order].tolist()):
            fill(image, polygon, colour, cv2.LINE_8, _SUBPIXEL_BITS)
        return image, landmarks_2d

    @staticmethod
    def _paint_interiors(image: np.ndarray, landmarks_2d: np.ndarray, albedo: np.ndarray, ambient: float) -> None:
        # Eye whites with a dark iris and a dark mouth cavity, slightly larger than
        # the landmark contours; the mesh painted afterwards covers all but the openings.
        shade = 0.5 + 0.5 * ambient
        unit = 1 << _SUBPIXEL_BITS
        for contour in (_RIGHT_EYE, _LEFT_EYE):
            pts = landmarks_2d[list(contour)]
            centre = pts.mean(axis=0)
            grown = (pts - centre) * 1.5 + centre
            cv2.fillConvexPoly(image, np.round(grown * unit).astype(np.int32), (210 * shade,) * 3, cv2.LINE_8,
                               _SUBPIXEL_BITS)
            radius = 0.2 * float(np.linalg.norm(pts[3] - pts[0]))
            cv2.circle(image, tuple(int(v) for v in np.round(centre * unit)), int(radius * unit), (60, 40, 30), -1,
                       cv2.LINE_8, _SUBPIXEL_BITS)
        mouth = landmarks_2d[list(_INNER_MOUTH)]
        centre = mouth.mean(axis=0)
        grown = np.round(((mouth - centre) * 1.4 + centre) * unit).astype(np.int32)
        cavity = tuple(float(v) for v in 0.25 * albedo * np.array([1.0, 0.6, 0.6]))
        cv2.fillPoly(image, [grown], cavity, cv2.LINE_8, _SUBPIXEL_BITS)


def _random_background(rng: np.random.Generator, size: int) -> np.ndarray:
    # A colour gradient with a few blurred random shapes: clutter the network
    # must learn to ignore, without any face-like structure.
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    image = (top * (1 - ramp) + bottom * ramp) * np.ones((1, size, 1))
    image = image.astype(np.uint8)
    for _ in range(int(rng.integers(2, 8))):
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        extent = int(rng.integers(size // 20, size // 3))
        if rng.random() < 0.5:
            cv2.circle(image, (x, y), extent, colour, -1)
        else:
            cv2.rectangle(image, (x, y), (x + extent, y + int(rng.integers(size // 20, size // 3))), colour, -1)
    image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.5, 3.0)))
    noise = rng.normal(0.0, 4.0, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


class SyntheticFaces:
    """Generator of aligned synthetic crops with exact expression targets.

    Args:
      blendshape_model: a model with ICT-style blendshapes (e.g.
        ``load_ict(region="face")``); its 28-d orthonormal basis is built here.
      n_components: ``n_e`` of the orthonormal basis (paper: 28).
      template: the alignment template (default: :func:`fitting.template.make_template`
        of the model).
      scene: the scene distribution.

    Every example depends only on ``(seed, index)`` (its own
    ``np.random.default_rng([seed, index])``), so any subset can be regenerated
    and generation parallelises without changing the data.
    """

    def __init__(
        self,
        blendshape_model: MorphableModel,
        *,
        n_components: int = 28,
        template: Template | None = None,
        scene: SceneConfig = SceneConfig(),
    ):
        if blendshape_model.expression_kind != "blendshape":
            raise ValueError("blendshape_model: expected a blendshape expression basis (e.g. ICT)")
        model, mapping = orthonormal_expression_basis(blendshape_model, n_components)
        self.model: MorphableModel = model
        self.mapping: BlendshapeMapping = mapping
        self.template = template if template is not None else make_template(blendshape_model)
        self.scene = scene
        self.renderer = FaceRenderer(model)
        self.expression_basis = expression_basis_id(model)
        names = blendshape_model.expression_names
        # Left/right partners among the blendshapes (ICT's "_L"/"_R" suffixes).
        self._mirror = np.array([names.index(_partner(n)) if _partner(n) in names else k
                                 for k, n in enumerate(names)])
        landmarks_3d = np.asarray(model.mean, np.float64)[self.renderer.landmark_indices]
        self._frontal_width = float(np.ptp(landmarks_3d[:, 0]))

    @property
    def expression_names(self) -> tuple[str, ...]:
        """Names of the ``n_e`` target components."""
        return self.model.expression_names

    def sample_blendshapes(self, rng: np.random.Generator) -> np.ndarray:
        """``(n_b,)`` sparse blendshape weights in [0, 1], sometimes left/right symmetric."""
        n_b = len(self._mirror)
        weights = np.where(rng.random(n_b) < self.scene.active_probability, rng.random(n_b), 0.0)
        if rng.random() < self.scene.symmetric_probability:
            weights = np.maximum(weights, weights[self._mirror])
        return weights

    def _scene(self, index: int, seed: int) -> dict:
        rng = np.random.default_rng([int(seed), int(index)])
        s = self.scene
        weights = self.sample_blendshapes(rng)
        red = rng.uniform(120, 240)
        elevation = np.deg2rad(rng.uniform(0, s.light_spread_degrees))
        azimuth = rng.uniform(0, 2 * np.pi)
        return dict(
            rng=rng,
            blendshapes=weights,
            expression=self.mapping.to_orthonormal.astype(np.float64) @ weights,
            identity=s.identity_scale * rng.standard_normal(self.model.n_identity),
            euler=rng.uniform(-1, 1, 3) * np.array([s.yaw_degrees, s.pitch_degrees, s.roll_degrees]),
            scale=rng.uniform(*s.face_width) / self._frontal_width,
            translation=(s.frame_size - 1) / 2.0 + rng.uniform(-1, 1, 2) * s.centre_jitter * s.frame_size,
            albedo=(red, red * rng.uniform(0.65, 0.85), red * rng.uniform(0.5, 0.75)),
            light=(np.sin(elevation) * np.cos(azimuth), np.sin(elevation) * np.sin(azimuth), np.cos(elevation)),
            ambient=rng.uniform(*s.ambient),
        )

    def generate(self, start: int, count: int, seed: int) -> dict[str, np.ndarray]:
        """Examples ``start … start + count − 1`` of the stream ``seed``.

        Returns:
          A dict of stacked arrays: ``crop (count, size, size, 3) uint8`` RGB;
          ``expression (count, n_e) float32`` (exact targets); ``blendshapes
          (count, n_b)``; ``identity (count, n_i)``; ``camera (count, 6)`` and
          ``landmarks (count, 68, 2)`` in crop pixels; ``alignment (count, 2, 3)``
          frame → crop; ``frame_landmarks (count, 68, 2)`` in the frame;
          ``index (count,)``.
        """
        scenes = [self._scene(start + k, seed) for k in range(count)]
        rotations = _euler_to_matrix(np.stack([sc["euler"] for sc in scenes]))
        out: dict[str, list] = {k: [] for k in ("crop", "expression", "blendshapes", "identity", "landmarks",
                                                "alignment", "frame_landmarks", "index")}
        for k, sc in enumerate(scenes):
            vertices = self.renderer.vertices(sc["identity"], sc["expression"])
            frame, frame_landmarks = self.renderer.render(
                vertices,
                rotations[k],
                sc["scale"],
                sc["translation"],
                background=_random_background(sc["rng"], self.scene.frame_size),
                albedo=sc["albedo"],
                light_direction=sc["light"],
                ambient=sc["ambient"],
            )
            crop, matrix = align_face(frame, frame_landmarks, self.template, border="reflect")
            out["crop"].append(crop)
            out["expression"].append(sc["expression"])
            out["blendshapes"].append(sc["blendshapes"])
            out["identity"].append(sc["identity"])
            out["landmarks"].append(transform_points(frame_landmarks, matrix))
            out["alignment"].append(matrix)
            out["frame_landmarks"].append(frame_landmarks)
            out["index"].append(start + k)
        result = {
            "crop": np.stack(out["crop"]),
            "expression": np.asarray(out["expression"], np.float32),
            "blendshapes": np.asarray(out["blendshapes"], np.float32),
            "identity": np.asarray(out["identity"], np.float32),
            "landmarks": np.asarray(out["landmarks"], np.float32),
            "alignment": np.asarray(out["alignment"], np.float64),
            "frame_landmarks": np.asarray(out["frame_landmarks"], np.float64),
            "index": np.asarray(out["index"], np.int64),
        }
        frame_camera = WeakPerspectiveCamera(
            rotation=Rotation.from_matrix(rotations).as_rotvec(),
            scale=np.asarray([sc["scale"] for sc in scenes]),
            translation=np.stack([sc["translation"] for sc in scenes]),
        )
        result["camera"] = camera_to_vector(warp_camera(frame_camera, result["alignment"]))
        return result


def _euler_to_matrix(yaw_pitch_roll_degrees: np.ndarray) -> np.ndarray:
    # morphable.rotation.euler_to_matrix's convention, R = R_y(yaw) R_x(pitch) R_z(roll)
    # (intrinsic "YXZ"), in NumPy: eager JAX would compile each op per batch size.
    return Rotation.from_euler("YXZ", yaw_pitch_roll_degrees, degrees=True).as_matrix()


def _partner(name: str) -> str:
    if name.endswith("_L"):
        return name[:-2] + "_R"
    if name.endswith("_R"):
        return name[:-2] + "_L"
    return name


def load_synthetic_faces(cache_dir: str | os.PathLike | None = None, *, scene: SceneConfig = SceneConfig(),
                         n_components: int = 28) -> SyntheticFaces:
    """:class:`SyntheticFaces` for the ICT-FaceKit face area (loaded through :func:`morphable.io.load_ict`)."""
    from morphable.io import load_ict

    return SyntheticFaces(load_ict(cache_dir=cache_dir, region="face"), n_components=n_components, scene=scene)


# A process-pool worker keeps its generator between tasks (set once by the initializer).
_WORKER_FACES: SyntheticFaces | None = None


def _init_worker(faces: SyntheticFaces) -> None:
    global _WORKER_FACES
    _WORKER_FACES = faces


def _generate_in_worker(start: int, count: int, seed: int) -> dict[str, np.ndarray]:
    assert _WORKER_FACES is not None
    return _WORKER_FACES.generate(start, count, seed)


def write_synthetic_shards(
    faces: SyntheticFaces,
    out_dir: str | os.PathLike,
    count: int,
    *,
    seed: int = 0,
    shard_size: int = 512,
    workers: int = 1,
    image_encoding: str = "jpeg",
    chunk: int = 16,
) -> list[Path]:
    """Render ``count`` examples into shards ``out_dir/synthetic-<seed>-<k>`` (the annotation format).

    Existing complete shards of the same name are kept (a rerun after a crash
    renders only what is missing); one holding a different number of examples
    than this call would write raises ``ValueError``. Each example is one "video" frame: video id
    ``synthetic-<seed>``, frame index = example index, subject id
    ``synthetic-<seed>-<index>`` (every render is a new identity); fit RMSE and
    expression uncertainty are 0 (the targets are exact).

    Args:
      faces: the generator.
      out_dir: output folder (created).
      count: number of examples.
      seed: stream seed.
      shard_size: examples per shard.
      workers: rendering processes (``spawn``ed; 1 = in this process).
      image_encoding: ``"jpeg"`` or ``"png"``.
      chunk: examples per task.

    Returns:
      The shard paths, in order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_shards = -(-count // shard_size)
    paths = [out_dir / f"synthetic-{seed}-{k:05d}" for k in range(n_shards)]
    todo = [k for k in range(n_shards) if not paths[k].exists()]
    for k in set(range(n_shards)) - set(todo):
        expected = min(count, (k + 1) * shard_size) - k * shard_size
        found = read_shard_metadata(paths[k])["count"]
        if found != expected:
            raise ValueError(f"{paths[k]}: holds {found} examples, this call would write {expected} "
                             "(written earlier with another count or shard size); use another out_dir")
    tasks = []
    for k in todo:
        stop = min(count, (k + 1) * shard_size)
        tasks.extend((start, min(chunk, stop - start), k) for start in range(k * shard_size, stop, chunk))
    if workers > 1 and tasks:
        context = multiprocessing.get_context("spawn")
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                                      initargs=(faces,))
        results = pool.map(_generate_in_worker, [t[0] for t in tasks], [t[1] for t in tasks], [seed] * len(tasks))
    else:
        pool = None
        results = (faces.generate(start, n, seed) for start, n, _ in tasks)
    try:
        writers: dict[int, ShardWriter] = {}
        for (start, n, k), batch in zip(tasks, results):
            if k not in writers:
                writers[k] = ShardWriter(
                    paths[k],
                    expression_names=faces.expression_names,
                    expression_basis=faces.expression_basis,
                    n_identity=faces.model.n_identity,
                    image_encoding=image_encoding,
                    image_size=faces.template.size,
                    template=faces.template,
                    extra={"source": "regressor.synthetic", "seed": seed, "scene": dataclasses.asdict(faces.scene)},
                )
            for j in range(n):
                writers[k].add(
                    image=batch["crop"][j],
                    expression=batch["expression"][j],
                    identity=batch["identity"][j],
                    camera=batch["camera"][j],
                    landmarks=batch["landmarks"][j],
                    alignment=batch["alignment"][j],
                    video_id=f"synthetic-{seed}",
                    frame_index=int(batch["index"][j]),
                    subject_id=f"synthetic-{seed}-{int(batch['index'][j])}",
                )
            if start + n == min(count, (k + 1) * shard_size):
                writers.pop(k).finish()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return paths


def save_sample_grid(
    path: str | os.PathLike,
    images: np.ndarray | Sequence[np.ndarray],
    *,
    columns: int = 8,
    landmarks=None,
    template: Template | None = None,
) -> Path:
    """Save images as one grid PNG (for the docs), optionally with landmarks drawn.

    Args:
      path: output ``.png``.
      images: ``(M, H, W, 3) uint8`` RGB images of one size.
      columns: images per row.
      landmarks: optional ``(M, 68, 2)`` pixels, drawn as green dots.
      template: optional template whose points are drawn as red dots on every image.

    Returns:
      The path written.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images: expected (M, H, W, 3) uint8, got {images.shape} {images.dtype}")
    m, h, w, _ = images.shape
    rows = -(-m // columns)
    grid = np.full((rows * h, min(m, columns) * w, 3), 255, np.uint8)
    for k in range(m):
        tile = np.ascontiguousarray(images[k])
        if template is not None:
            for x, y in template.points:
                cv2.circle(tile, (int(round(x)), int(round(y))), 1, (255, 0, 0), -1)
        if landmarks is not None:
            for x, y in np.asarray(landmarks)[k]:
                cv2.circle(tile, (int(round(x)), int(round(y))), 1, (0, 255, 0), -1)
        r, c = divmod(k, columns)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), grid[:, :, ::-1]):
        raise OSError(f"path: could not write {path}")
    return path
