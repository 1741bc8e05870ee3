"""Input pipeline: shards → decoded, augmented, batched crops, with grain.

Training reads a :class:`fitting.shards.ShardDataset` (a grain
``RandomAccessDataSource``) through a ``grain.DataLoader``: an ``IndexSampler``
shuffles globally and repeats forever (seeded), ``worker_count`` processes
decode the JPEG/PNG crops and augment them (:class:`TrainTransform`, a
``grain.transforms.RandomMap`` whose generator grain seeds per record from the
sampler seed — so each example and its augmentation do not depend on the
number of workers, though grain groups them into batches per worker), and
``Batch`` stacks them; each worker keeps ``worker_buffer_size`` batches ready
(prefetch). The loader's iterator state is saved in every checkpoint, so a
resumed run sees exactly the batches it would have seen.

Augmentation keeps the target valid (see
:class:`regressor.configs.default.AugmentationConfig`): a small random
similarity about the crop centre and photometric jitter; no horizontal flip. The
similarity and the resize from the stored 224² crop to the network's input size
are one ``cv2.warpAffine``; evaluation and inference use the same resize
(:func:`resize_crops`) without jitter.

Batches are dicts of NumPy arrays: ``image (B, S, S, 3) uint8`` RGB,
``expression (B, n_e) float32``, ``weight (B, n_e) float32`` (per-coefficient
loss weights), ``index (B,) int64`` (global frame index); evaluation batches add
``mask (B,) bool`` (False on padding).

This module imports no JAX: grain's worker processes import it, and they only
decode and augment.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterator

import cv2
import grain
from absl import flags
import numpy as np

from fitting.shards import METADATA_FILE, ShardDataset, decode_image
from regressor.configs.default import AugmentationConfig

__all__ = [
    "resize_matrix",
    "augmentation_matrix",
    "photometric_jitter",
    "prepare_example",
    "resize_crops",
    "loss_weights",
    "TrainTransform",
    "EvalTransform",
    "train_loader",
    "eval_batches",
    "annotation_shards",
]

_BATCH_KEYS = ("image", "expression", "weight", "index")


def annotation_shards(annotation_dir: str | os.PathLike, split: str) -> list[Path]:
    """The shard directories of one split of an annotation-pipeline output folder.

    Reads ``splits.json`` (video ids per split) and returns
    ``annotation_dir/shards/<video id>`` for each listed video whose shard is
    complete (a kept video whose frames were all invalid has none).

    Raises:
      FileNotFoundError: without ``splits.json``; ValueError: for an unknown split.
    """
    # Imported here: fitting.annotate pulls in the fitter (JAX), which grain's
    # worker processes, importing this module, do not need.
    from fitting.annotate import SHARDS, SPLITS

    root = Path(annotation_dir)
    splits_file = root / SPLITS
    if not splits_file.is_file():
        raise FileNotFoundError(f"annotation_dir: {splits_file} not found (run the annotation pipeline first)")
    splits = json.loads(splits_file.read_text())
    if split not in splits:
        raise ValueError(f"split: {split!r} not in {splits_file} (has {sorted(splits)})")
    shards = [root / SHARDS / video_id for video_id in splits[split]]
    return [path for path in shards if (path / METADATA_FILE).is_file()]


def resize_matrix(source_size: int, target_size: int) -> np.ndarray:
    """``(2, 3)`` affine matrix resizing a ``source_size²`` image to ``target_size²``.

    Pixel *areas* are matched (the edges of the two images coincide, as in
    ``cv2.resize``): ``x_t = (x_s + 0.5)·target/source − 0.5``.

    Examples:
      >>> resize_matrix(224, 112).tolist()
      [[0.5, 0.0, -0.25], [0.0, 0.5, -0.25]]
    """
    factor = target_size / source_size
    offset = 0.5 * factor - 0.5
    return np.array([[factor, 0.0, offset], [0.0, factor, offset]])


def augmentation_matrix(rng: np.random.Generator, size: int, config: AugmentationConfig) -> np.ndarray:
    """A random similarity about the centre of a ``size²`` crop, ``(2, 3)`` (crop → crop).

    Scale uniform in ``[1 − scale, 1 + scale]``, rotation in ``±rotate_degrees``,
    shift in ``±translate·size`` per axis.
    """
    scale = 1.0 + rng.uniform(-config.scale, config.scale)
    angle = math.radians(rng.uniform(-config.rotate_degrees, config.rotate_degrees))
    shift = rng.uniform(-config.translate, config.translate, 2) * size
    centre = (size - 1) / 2.0
    a, b = scale * math.cos(angle), scale * math.sin(angle)
    linear = np.array([[a, -b], [b, a]])
    translation = centre + shift - linear @ np.array([centre, centre])
    return np.concatenate([linear, translation[:, None]], axis=1)


def photometric_jitter(image: np.ndarray, rng: np.random.Generator, config: AugmentationConfig) -> np.ndarray:
    """Colour augmentation of an RGB ``(H, W, 3) uint8`` image; returns uint8.

    Brightness (additive), contrast (about the mean grey), saturation (blend with
    grey), per-channel gain, optional greyscale and Gaussian blur, pixel noise.
    """
    x = image.astype(np.float32)
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = x * (1.0 + rng.uniform(-config.color_gain, config.color_gain, 3)).astype(np.float32)
    saturation = 1.0 + rng.uniform(-config.saturation, config.saturation)
    x = grey[..., None] + saturation * (x - grey[..., None])
    contrast = 1.0 + rng.uniform(-config.contrast, config.contrast)
    x = grey.mean() + contrast * (x - grey.mean())
    x = x + 255.0 * rng.uniform(-config.brightness, config.brightness)
    if rng.random() < config.grayscale_probability:
        x = np.repeat((x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, axis=-1)
    if rng.random() < config.blur_probability:
        x = cv2.GaussianBlur(x, (0, 0), float(rng.uniform(0.3, 1.5)))
    if config.noise_std > 0:
        x = x + rng.normal(0.0, rng.uniform(0.0, config.noise_std), x.shape).astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def loss_weights(uncertainty: np.ndarray, floor: float | None) -> np.ndarray:
    """Per-coefficient loss weights ``floor² / (floor² + u²)`` (ones when ``floor`` is None).

    A coefficient the fitter pinned down (``u ≪ floor``) weighs 1; one it could
    not (``u ≫ floor``) weighs ``(floor/u)²`` — the inverse-variance weighting
    of the pseudo-label noise, capped at 1.

    Examples:
      >>> [round(float(w), 3) for w in loss_weights(np.array([0.0, 0.1, 0.3]), 0.1)]
      [1.0, 0.5, 0.1]
    """
    uncertainty = np.asarray(uncertainty, np.float32)
    if floor is None:
        return np.ones_like(uncertainty)
    floor2 = np.float32(floor) ** 2
    return (floor2 / (floor2 + np.nan_to_num(uncertainty, nan=np.inf) ** 2)).astype(np.float32)


def prepare_example(
    record: dict,
    *,
    image_size: int,
    rng: np.random.Generator | None = None,
    augmentation: AugmentationConfig | None = None,
    uncertainty_floor: float | None = None,
) -> dict:
    """Decode (and optionally augment) one shard record into a training example.

    Args:
      record: a :class:`fitting.shards.ShardDataset` item.
      image_size: network input side ``S``.
      rng: generator for the augmentation (required when ``augmentation`` is enabled).
      augmentation: augmentation settings, or None / disabled for evaluation.
      uncertainty_floor: see :func:`loss_weights` (None: unit weights).

    Returns:
      ``{"image": (S, S, 3) uint8, "expression": (n_e,) float32,
      "weight": (n_e,) float32, "index": int64}``.
    """
    crop = decode_image(record["image"])
    size = crop.shape[0]
    matrix = resize_matrix(size, image_size)
    augment = augmentation is not None and augmentation.enabled
    if augment:
        jitter = augmentation_matrix(rng, size, augmentation)
        matrix = np.concatenate([matrix[:, :2] @ jitter[:, :2], (matrix[:, :2] @ jitter[:, 2] + matrix[:, 2])[:, None]],
                                axis=1)
    if augment or image_size != size:
        # Reflection keeps borders face-coloured rather than black after a shift.
        crop = cv2.warpAffine(np.ascontiguousarray(crop), matrix, (image_size, image_size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT_101)
    if augment:
        crop = photometric_jitter(crop, rng, augmentation)
    return {
        "image": np.ascontiguousarray(crop),
        "expression": np.asarray(record["expression"], np.float32),
        "weight": loss_weights(record["expression_uncertainty"], uncertainty_floor),
        "index": np.int64(record["index"]),
    }


def resize_crops(crops: np.ndarray, image_size: int) -> np.ndarray:
    """Resize aligned crops ``(B, H, H, 3) uint8`` to the network's ``(B, S, S, 3)`` exactly as evaluation does."""
    crops = np.asarray(crops)
    if crops.shape[1] == image_size:
        return crops
    matrix = resize_matrix(crops.shape[1], image_size)
    return np.stack([
        cv2.warpAffine(np.ascontiguousarray(c), matrix, (image_size, image_size), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REFLECT_101)
        for c in crops
    ])


class TrainTransform(grain.transforms.RandomMap):
    """grain transform: decode + augment one record (see :func:`prepare_example`)."""

    def __init__(self, image_size: int, augmentation: AugmentationConfig, uncertainty_floor: float | None):
        self.image_size = int(image_size)
        self.augmentation = augmentation
        self.uncertainty_floor = uncertainty_floor

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        """A shard record → ``{"image" (S, S, 3) uint8, "expression", "weight" (n_e,), "index"}``."""
        return prepare_example(element, image_size=self.image_size, rng=rng, augmentation=self.augmentation,
                               uncertainty_floor=self.uncertainty_floor)

    def __repr__(self) -> str:
        return f"TrainTransform({self.image_size}, {self.augmentation}, {self.uncertainty_floor})"


class EvalTransform(grain.transforms.Map):
    """grain transform: decode and resize one record, no augmentation."""

    def __init__(self, image_size: int):
        self.image_size = int(image_size)

    def map(self, element: dict) -> dict:
        """A shard record → ``{"image" (S, S, 3) uint8, "expression", "weight" (n_e,), "index"}``."""
        return prepare_example(element, image_size=self.image_size)


class _SelectKeys(grain.transforms.Map):
    # Batch only the arrays the step needs (strings and ids stay behind).
    def map(self, element: dict) -> dict:
        return {k: element[k] for k in _BATCH_KEYS}


def train_loader(
    dataset: ShardDataset,
    *,
    batch_size: int,
    image_size: int,
    augmentation: AugmentationConfig,
    seed: int,
    uncertainty_floor: float | None = None,
    worker_count: int = 0,
    worker_buffer_size: int = 2,
    shard_options: grain.sharding.ShardOptions | None = None,
) -> grain.DataLoader:
    """An endless, shuffled, augmented, batched grain loader over ``dataset``.

    Args:
      dataset: the training shards.
      batch_size: batch size **of this process** (the global batch divided by
        ``jax.process_count()``).
      image_size: network input side.
      augmentation: augmentation settings.
      seed: shuffling and augmentation seed (32-bit, non-negative).
      uncertainty_floor: loss-weighting floor, None for unit weights.
      worker_count: decoding processes (0: in this process).
      worker_buffer_size: batches each worker prepares ahead.
      shard_options: how records are split across hosts (default
        ``ShardByJaxProcess``: each JAX process reads a disjoint part).

    Returns:
      A ``grain.DataLoader``; ``iter(loader)`` yields batch dicts (see module
      docstring) and supports ``get_state``/``set_state``.
    """
    if shard_options is None:
        shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    if worker_count > 0 and not flags.FLAGS.is_parsed():
        # grain ≤ 0.2.18 reads an Abseil flag when it starts workers with JAX
        # imported and raises if the program never parsed flags (google/grain
        # issue 1355, fixed upstream in PR 1362); taking the defaults is what a
        # parse of an empty command line would do.
        flags.FLAGS.mark_as_parsed()
    sampler = grain.samplers.IndexSampler(
        num_records=len(dataset), shard_options=shard_options, shuffle=True, num_epochs=None, seed=int(seed)
    )
    return grain.DataLoader(
        data_source=dataset,
        sampler=sampler,
        operations=[
            TrainTransform(image_size, augmentation, uncertainty_floor),
            _SelectKeys(),
            grain.transforms.Batch(batch_size=batch_size, drop_remainder=True),
        ],
        worker_count=worker_count,
        worker_buffer_size=worker_buffer_size,
        shard_options=shard_options,
    )


def eval_batches(
    dataset: ShardDataset,
    *,
    batch_size: int,
    image_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict]:
    """Every frame of ``dataset`` once, in order, in fixed-size batches (last one padded).

    Padding repeats the last frame with ``mask`` False, so every batch has the
    same shape (one compiled evaluation step) and divides across devices. With
    several processes each one yields its contiguous part (padded to the same
    number of batches on every process).

    Yields:
      batch dicts with ``mask (B,) bool`` added.
    """
    total = len(dataset)
    per_process = -(-total // process_count)
    start = process_index * per_process
    stop = min(total, start + per_process)
    n_batches = -(-per_process // batch_size)
    transform = EvalTransform(image_size)
    for b in range(n_batches):
        indices = list(range(start + b * batch_size, min(stop, start + (b + 1) * batch_size)))
        mask = np.zeros(batch_size, bool)
        mask[: len(indices)] = True
        if not indices:
            indices = [total - 1]
        indices = indices + [indices[-1]] * (batch_size - len(indices))
        examples = [transform.map(dataset[i]) for i in indices]
        batch = {k: np.stack([e[k] for e in examples]) for k in _BATCH_KEYS}
        batch["mask"] = mask
        yield batch
