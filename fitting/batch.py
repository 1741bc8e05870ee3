"""Many videos at once: length buckets, ``vmap``, and sharding over local devices.

Each video is padded to the smallest bucket length that holds it (padding
frames take no part in any term of the energy, see
:func:`fitting.video.fit_video_arrays`), videos of a bucket are stacked in
batches of a fixed size (the last batch padded with empty videos), and one
program serves every batch of a bucket, so the fit compiles once per bucket.
The batch axis is split over the local devices (``shard_map`` over a 1-D
mesh; the model is replicated); each accelerator ``vmap``s its videos, each
CPU device fits its videos one after another (``lax.map``: the frames are
already vectorised, and on XLA:CPU a vmapped batch turns plain matrix
products into slower batched ones).

Examples:
  >>> import numpy as np, jax.numpy as jnp
  >>> import morphable
  >>> from fitting.batch import fit_videos
  >>> rng = np.random.default_rng(0)
  >>> model = morphable.make_model(rng.normal(size=(68, 3)), rng.normal(size=(68, 3, 4)) * 0.1,
  ...                              rng.normal(size=(68, 3, 3)) * 0.1, triangles=[[0, 1, 2]],
  ...                              landmark_indices=range(68))
  >>> points = np.asarray(morphable.landmarks(model, jnp.zeros(4), jnp.zeros(3)))[:, :2] * 40 + 200
  >>> results = fit_videos(model, [np.repeat(points[None], 6, 0), np.repeat(points[None], 9, 0)],
  ...                      bucket_sizes=(16,))
  >>> [r.expression.shape for r in results]
  [(6, 3), (9, 3)]
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fitting.video import VideoFitConfig, VideoFitResult, _checked_inputs, fit_video_arrays
from morphable.camera import WeakPerspectiveCamera
from morphable.model import MorphableModel

__all__ = ["fit_videos", "fit_video_batch", "bucket_length", "DEFAULT_BUCKETS"]

DEFAULT_BUCKETS = (64, 256, 1024, 4096)
"""Default bucket lengths (frames); longer videos go to ×4 multiples of the last one."""

def _fit_shard(model, landmarks2d, mask, exists, config, sequential: bool):
    """Fit the videos of one device's shard: one after another (``lax.map``) or together (``vmap``)."""
    if sequential:
        return jax.lax.map(lambda video: fit_video_arrays(model, *video, config), (landmarks2d, mask, exists))
    return jax.vmap(fit_video_arrays, in_axes=(None, 0, 0, 0, None))(model, landmarks2d, mask, exists, config)


@partial(jax.jit, static_argnames=("config", "mesh"))
def _fit_batch(model, landmarks2d, mask, exists, config, mesh):
    # On a CPU the per-frame work is already vectorised over the frames and a
    # vmapped batch only turns plain matrix products into slower batched ones,
    # so each device fits its videos in turn; accelerators vmap them.
    sequential = all(device.platform == "cpu" for device in mesh.devices.flat)
    videos = PartitionSpec("videos")
    fit = jax.shard_map(
        partial(_fit_shard, config=config, sequential=sequential),
        mesh=mesh,
        in_specs=(PartitionSpec(), videos, videos, videos),
        out_specs=videos,
        # The fit's loops start from constants that become per-video values; each
        # shard's computation is independent, so no replication bookkeeping is needed.
        check_vma=False,
    )
    return fit(model, landmarks2d, mask, exists)


def bucket_length(n_frames: int, bucket_sizes: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """The smallest bucket length ``≥ n_frames``; beyond the last bucket, ×4 steps from it.

    Examples:
      >>> bucket_length(100), bucket_length(5000, (64, 1024))
      (256, 16384)
    """
    sizes = sorted(int(b) for b in bucket_sizes)
    if not sizes or sizes[0] < 1:
        raise ValueError(f"bucket_sizes: expected positive lengths, got {tuple(bucket_sizes)!r}")
    for size in sizes:
        if size >= n_frames:
            return size
    size = sizes[-1]
    while size < n_frames:
        size *= 4
    return size


def _mesh(devices: Sequence[jax.Device] | None):
    devices = list(jax.local_devices() if devices is None else devices)
    mesh = Mesh(np.asarray(devices), ("videos",))
    return NamedSharding(mesh, PartitionSpec("videos")), NamedSharding(mesh, PartitionSpec())


def fit_video_batch(
    model: MorphableModel,
    landmarks2d,
    mask,
    exists,
    *,
    config: VideoFitConfig = VideoFitConfig(),
    devices: Sequence[jax.Device] | None = None,
) -> VideoFitResult:
    """Fit a stacked batch of equally padded videos, sharded over ``devices``.

    Args:
      landmarks2d: ``(B, T, L, 2)`` pixels, NaN = missing.
      mask: ``(B, T, L)`` bool, False = missing.
      exists: ``(B, T)`` bool, False for padding frames (after each video's end).
      config: :class:`fitting.video.VideoFitConfig`.
      devices: the batch axis is split over these (default all local devices);
        ``B`` must be a multiple of their number.

    Returns:
      :class:`fitting.video.VideoFitResult` with a leading batch axis ``B``,
      sharded like the inputs. Compiled once per ``(B, T)`` and config.
    """
    sharded, replicated = _mesh(devices)
    n_devices = len(sharded.mesh.devices.flat)
    batch = np.shape(landmarks2d)[0]
    if batch % n_devices:
        raise ValueError(f"landmarks2d: batch of {batch} videos is not a multiple of {n_devices} devices")
    return _fit_batch(
        jax.device_put(model, replicated),
        jax.device_put(jnp.asarray(landmarks2d, jnp.float32), sharded),
        jax.device_put(jnp.asarray(mask, bool), sharded),
        jax.device_put(jnp.asarray(exists, bool), sharded),
        config,
        sharded.mesh,
    )


def _slice_result(stacked: VideoFitResult, index: int, n_frames: int) -> VideoFitResult:
    """Video ``index`` of a batched result, cut to its own ``n_frames``."""

    def frames(x):
        return x[index, :n_frames]

    cameras = stacked.cameras
    result = VideoFitResult(
        identity=stacked.identity[index],
        expression=frames(stacked.expression),
        cameras=WeakPerspectiveCamera(
            rotation=frames(cameras.rotation), scale=frames(cameras.scale), translation=frames(cameras.translation)
        ),
        landmark_rmse=frames(stacked.landmark_rmse),
        landmark_nme=frames(stacked.landmark_nme),
        expression_std=frames(stacked.expression_std),
        frame_valid=frames(stacked.frame_valid),
        face_size=stacked.face_size[index],
        energy=stacked.energy[index],
        iterations=stacked.iterations[index],
        converged=stacked.converged[index],
        valid=stacked.valid[index],
    )
    return jax.tree.map(jnp.asarray, result)


def fit_videos(
    model: MorphableModel,
    videos: Sequence,
    *,
    masks: Sequence | None = None,
    config: VideoFitConfig = VideoFitConfig(),
    bucket_sizes: Sequence[int] = DEFAULT_BUCKETS,
    batch_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> list[VideoFitResult]:
    """Fit many videos: each exactly as :func:`fitting.video.fit_video` would, batched.

    Args:
      model: the morphable model.
      videos: sequence of ``(F_i, L, 2)`` landmark arrays, pixels (NaN = missing).
      masks: optional sequence of ``(F_i, L)`` or ``(F_i,)`` bool masks (or ``None`` entries).
      config: :class:`fitting.video.VideoFitConfig`.
      bucket_sizes: padded lengths; a video goes to the smallest that holds it
        (beyond the last, ×4 steps from it).
      batch_size: videos per compiled batch (rounded up to a multiple of the
        number of devices). Default: 8, or the device count when larger.
      devices: devices to shard the batch axis over (default all local devices).

    Returns:
      One :class:`fitting.video.VideoFitResult` per video, in input order, cut
      to the video's own length.

    Raises:
      ValueError: on a malformed video or mask (naming its position).
    """
    config.validate()
    devices = list(jax.local_devices() if devices is None else devices)
    n_devices = len(devices)
    if masks is not None and len(masks) != len(videos):
        raise ValueError(f"masks: expected {len(videos)} entries, got {len(masks)}")
    checked = []
    for position, video in enumerate(videos):
        mask = None if masks is None else masks[position]
        points, full = _checked_inputs(model, video, mask, name=f"videos[{position}]")
        checked.append((np.asarray(points, np.float32), np.asarray(full, bool)))
    size = max(8, n_devices) if batch_size is None else int(batch_size)
    if size < 1:
        raise ValueError(f"batch_size: must be positive, got {batch_size!r}")
    size = -(-size // n_devices) * n_devices

    buckets: dict[int, list[int]] = {}
    for position, (points, _) in enumerate(checked):
        buckets.setdefault(bucket_length(points.shape[0], bucket_sizes), []).append(position)

    n_landmarks = len(model.landmark_indices)
    results: list[VideoFitResult | None] = [None] * len(checked)
    for length, members in sorted(buckets.items()):
        for start in range(0, len(members), size):
            group = members[start : start + size]
            landmarks = np.full((size, length, n_landmarks, 2), np.nan, np.float32)
            mask = np.zeros((size, length, n_landmarks), bool)
            exists = np.zeros((size, length), bool)
            for slot, position in enumerate(group):
                points, full = checked[position]
                landmarks[slot, : len(points)] = points
                mask[slot, : len(points)] = full
                exists[slot, : len(points)] = True
            stacked = fit_video_batch(model, landmarks, mask, exists, config=config, devices=devices)
            # Slice on the host: slicing device arrays compiles a program per new video length.
            stacked = jax.device_get(stacked)
            for slot, position in enumerate(group):
                results[position] = _slice_result(stacked, slot, checked[position][0].shape[0])
    return results
