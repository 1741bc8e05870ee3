"""Prediction: aligned crops (or images + 68 landmarks) → expression vectors.

:class:`Predictor` holds a trained network's variables and one jitted forward
function. Batches are cut into chunks of ``batch_size`` and the last chunk is
padded up to the next power of two (at most ``batch_size``), so a stream of
arbitrary batch sizes compiles only ``log2(batch_size) + 1`` programs; a single
image uses the size-1 program (the low-latency path). Crops are resized to the
network's input size exactly as in evaluation
(:func:`regressor.input_pipeline.resize_crops`); images with landmarks are first
aligned with :func:`fitting.template.align_face` to the template the training
shards used (stored in the run's ``dataset.json``); photos without landmarks
go through a face and landmark detector first (:meth:`Predictor.predict_faces`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fitting.detection import FaceDetection, check_image
from fitting.template import Template, align_face
from regressor.configs.default import TrainConfig, from_dict
from regressor.input_pipeline import resize_crops
from regressor.models import ResNetRegressor
from regressor.train import create_model, load_variables

__all__ = ["Predictor"]


class Predictor:
    """Batched, jitted expression prediction with a trained regressor.

    Args:
      model: the network (:class:`regressor.models.ResNetRegressor`).
      variables: ``{"params", "batch_stats"}``.
      image_size: network input side (crops of another size are resized).
      template: alignment template for :meth:`predict_images` / :meth:`predict_image`.
      expression_names: names of the outputs (for reports).
      batch_size: largest batch run at once.

    Examples:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from regressor.models import ResNetRegressor
      >>> model = ResNetRegressor(n_outputs=3, stage_sizes=(1,), num_filters=4)
      >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
      >>> Predictor(model, variables, image_size=32).predict_crops(np.zeros((5, 32, 32, 3), np.uint8)).shape
      (5, 3)
    """

    def __init__(
        self,
        model: ResNetRegressor,
        variables: dict,
        *,
        image_size: int = 224,
        template: Template | None = None,
        expression_names: Sequence[str] = (),
        batch_size: int = 64,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size: must be positive, got {batch_size}")
        self.model = model
        self.variables = jax.device_put({"params": variables["params"], "batch_stats": variables["batch_stats"]})
        self.image_size = int(image_size)
        self.template = template
        self.expression_names = tuple(expression_names)
        self.batch_size = int(batch_size)
        self._detector = None

        def forward(variables, images):
            return model.apply(variables, images, train=False)

        self._forward = jax.jit(forward)

    @classmethod
    def from_run(cls, run: str | os.PathLike, *, step: int | None = None, batch_size: int = 64) -> "Predictor":
        """Load the latest (or ``step``) checkpoint of a training run directory."""
        run = Path(run)
        config: TrainConfig = from_dict(json.loads((run / "config.json").read_text()))
        dataset = json.loads((run / "dataset.json").read_text()) if (run / "dataset.json").exists() else {}
        variables, _ = load_variables(run, step)
        template = Template.from_dict(dataset["template"]) if dataset.get("template") else None
        return cls(create_model(config.model), variables, image_size=config.model.image_size, template=template,
                   expression_names=dataset.get("expression_names", ()), batch_size=batch_size)

    def _bucket(self, n: int) -> int:
        return min(self.batch_size, 1 << max(0, (n - 1).bit_length()))

    def predict_crops(self, crops) -> np.ndarray:
        """Expression vectors of aligned crops.

        Args:
          crops: ``(B, H, H, 3) uint8`` RGB crops aligned to the template (any
            ``H``; resized to the network's input size).

        Returns:
          ``(B, n_e) float32``.
        """
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[-1] != 3 or crops.shape[1] != crops.shape[2] or crops.dtype != np.uint8:
            raise ValueError(f"crops: expected (B, H, H, 3) uint8, got {crops.shape} {crops.dtype}")
        outputs = []
        for start in range(0, len(crops), self.batch_size):
            chunk = resize_crops(crops[start:start + self.batch_size], self.image_size)
            n = len(chunk)
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], self._bucket(n) - n, axis=0)]) \
                if self._bucket(n) > n else chunk
            outputs.append(np.asarray(self._forward(self.variables, jnp.asarray(padded)))[:n])
        n_outputs = self.model.n_outputs
        return np.concatenate(outputs) if outputs else np.zeros((0, n_outputs), np.float32)

    def predict_crop(self, crop) -> np.ndarray:
        """Expression vector ``(n_e,)`` of one aligned crop ``(H, H, 3) uint8`` (size-1 program)."""
        return self.predict_crops(np.asarray(crop)[None])[0]

    def _template(self, template: Template | None) -> Template:
        template = template or self.template
        if template is None:
            raise ValueError("template: the run records none; pass the template the training crops used")
        return template

    def predict_images(self, images: Sequence[np.ndarray], landmarks, *, template: Template | None = None) -> np.ndarray:
        """Align each image with its 68 landmarks, then predict.

        Args:
          images: ``B`` RGB uint8 images ``(H_b, W_b, 3)`` (sizes may differ).
          landmarks: ``(B, 68, 2)`` pixels in each image (NaN = missing point).
          template: overrides the run's template.

        Returns:
          ``(B, n_e) float32``.
        """
        template = self._template(template)
        landmarks = np.asarray(landmarks)
        if landmarks.shape != (len(images), 68, 2):
            raise ValueError(f"landmarks: expected ({len(images)}, 68, 2), got {landmarks.shape}")
        crops = np.stack([align_face(image, points, template)[0] for image, points in zip(images, landmarks)])
        return self.predict_crops(crops)

    def predict_image(self, image: np.ndarray, landmarks, *, template: Template | None = None) -> np.ndarray:
        """One RGB image ``(H, W, 3) uint8`` and its ``(68, 2)`` landmarks → ``(n_e,)``."""
        crop, _ = align_face(image, landmarks, self._template(template))
        return self.predict_crop(crop)

    def predict_faces(
        self,
        image: np.ndarray,
        *,
        detector=None,
        max_faces: int | None = None,
        template: Template | None = None,
    ) -> tuple[FaceDetection, np.ndarray]:
        """Detect the faces of a photo (or video frame) and predict each one's expression.

        Args:
          image: ``(H, W, 3) uint8`` RGB.
          detector: a :class:`fitting.detection.LandmarkDetector`; default
            :class:`fitting.detection.DlibDetector` (created once and kept).
          max_faces: keep at most this many faces, most confident first.
          template: overrides the run's template.

        Returns:
          ``(detection, expressions)``: the :class:`fitting.detection.FaceDetection`
          (boxes, landmarks, scores; most confident first) and ``(K, n_e)
          float32`` expression vectors, one per face (``K = 0`` when none is found).
        """
        if max_faces is not None and max_faces < 1:
            raise ValueError(f"max_faces: must be positive or None, got {max_faces!r}")
        image = check_image(image)
        if detector is None:
            if self._detector is None:
                from fitting.detection import DlibDetector

                self._detector = DlibDetector()
            detector = self._detector
        detection = detector.detect(image)
        if max_faces is not None and detection.n_faces > max_faces:
            detection = FaceDetection.create(
                detection.boxes[:max_faces],
                detection.landmarks[:max_faces],
                detection.scores[:max_faces],
                None if detection.depth is None else detection.depth[:max_faces],
                sort=False,
            )
        if detection.n_faces == 0:
            return detection, np.zeros((0, self.model.n_outputs), np.float32)
        return detection, self.predict_images([image] * detection.n_faces, detection.landmarks, template=template)
