"""Save and load trained classifiers: ``NAME.npz`` (arrays) + ``NAME.json`` (metadata), no pickle.

The JSON file holds what a reader needs to trust the arrays: format version,
class names, the expression-basis id of the features, the configuration, the
learner kind, every array's shape and dtype, and the SHA-256 of the ``.npz``.
Arrays are read with ``allow_pickle=False``.

The expression-basis id (:func:`expression_basis_id`) names the model, the
number of expression components and a hash of the basis and its component
names, so a classifier trained on ICT blendshape weights refuses features from
the 28-d orthonormal basis or from another model, instead of silently
predicting nonsense.

Examples:
  >>> import tempfile, pathlib, numpy as np
  >>> from classifier.ecoc import ECOCClassifier, fit, predict
  >>> rng = np.random.default_rng(0)
  >>> x = np.concatenate([rng.normal(0, 1, (20, 3)), rng.normal(3, 1, (20, 3))])
  >>> trained = fit(ECOCClassifier(), x, np.repeat(["a", "b"], 20), basis_id="toy:n_e=3:0")
  >>> path = pathlib.Path(tempfile.mkdtemp()) / "emotion"
  >>> npz_path, json_path = save_classifier(path, trained)
  >>> loaded = load_classifier(path, basis_id="toy:n_e=3:0")
  >>> bool(np.all(predict(loaded, x) == predict(trained, x)))
  True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Optional, Union

import jax.numpy as jnp
import numpy as np

from classifier.ecoc import ECOCClassifier, TrainedClassifier
from classifier.svm import KernelSVMs, LinearSVMs, NystroemSVMs, SVMConfig

__all__ = ["save_classifier", "load_classifier", "expression_basis_id", "FORMAT", "FORMAT_VERSION"]

FORMAT = "deepexp3d.classifier"
FORMAT_VERSION = 1

_LEARNER_FIELDS = {
    "linear": (LinearSVMs, ("weights", "bias", "iterations", "converged")),
    "kernel": (KernelSVMs, ("support", "dual_coef", "bias", "gamma", "iterations", "converged")),
    "nystroem": (NystroemSVMs, ("landmarks", "projection", "gamma")),
}
_TOP_FIELDS = ("coding", "feature_mean", "feature_scale", "temperature")


def expression_basis_id(model) -> str:
    """Identifier of a model's expression basis: ``"NAME:n_e=K:HASH"``.

    The hash (16 hex digits of SHA-256) covers the float32 basis and the
    component names, so two bases with the same name and size but different
    vectors (e.g. an edited model) get different ids.

    Args:
      model: a :class:`~morphable.model.MorphableModel`.

    Returns:
      e.g. ``"ict-facekit:n_e=53:3f1c2a..."``.
    """
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(np.asarray(model.expression_basis, np.float32)).tobytes())
    digest.update("\n".join(model.expression_names).encode())
    return f"{model.name}:n_e={model.n_expression}:{digest.hexdigest()[:16]}"


def _paths(path: Union[str, Path]) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".npz", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".npz"), path.with_name(path.name + ".json")


def _learner_kind(learners) -> str:
    for kind, (cls, _) in _LEARNER_FIELDS.items():
        if isinstance(learners, cls):
            return kind
    raise TypeError(f"save_classifier: unknown learner type {type(learners).__name__}")


def _config_to_json(config: ECOCClassifier) -> dict:
    svm = {f.name: getattr(config.svm, f.name) for f in dataclasses.fields(config.svm)}
    svm["C"] = float(svm["C"])
    svm["gamma"] = None if svm["gamma"] is None else float(svm["gamma"])
    rest = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "svm"}
    return {"svm": svm, **rest}


def _config_from_json(data: dict) -> ECOCClassifier:
    data = dict(data)
    return ECOCClassifier(svm=SVMConfig(**data.pop("svm")), **data)


def save_classifier(path: Union[str, Path], trained: TrainedClassifier) -> tuple[Path, Path]:
    """Write ``PATH.npz`` and ``PATH.json`` (a ``.npz``/``.json`` suffix on ``path`` is ignored).

    Args:
      path: destination without suffix; the folder is created.
      trained: a :class:`~classifier.ecoc.TrainedClassifier` (not batched).

    Returns:
      The two paths written.
    """
    npz_path, json_path = _paths(path)
    if np.ndim(trained.temperature) != 0:
        raise ValueError("save_classifier: expected one classifier, got a batch (temperature is not a scalar)")
    kind = _learner_kind(trained.learners)
    arrays = {name: np.asarray(getattr(trained, name)) for name in _TOP_FIELDS}
    _, fields = _LEARNER_FIELDS[kind]
    for name in fields:
        arrays[f"learners.{name}"] = np.asarray(getattr(trained.learners, name))
    if kind == "nystroem":
        for name in _LEARNER_FIELDS["linear"][1]:
            arrays[f"learners.linear.{name}"] = np.asarray(getattr(trained.learners.linear, name))

    npz_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(npz_path, **arrays)
    metadata = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "class_names": list(trained.class_names),
        "basis_id": trained.basis_id,
        "n_features": int(trained.n_features),
        "learner_kind": kind,
        "config": _config_to_json(trained.config),
        "arrays": {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in arrays.items()},
        "npz_sha256": hashlib.sha256(npz_path.read_bytes()).hexdigest(),
    }
    json_path.write_text(json.dumps(metadata, indent=2))
    return npz_path, json_path


def load_classifier(path: Union[str, Path], *, basis_id: Optional[str] = None) -> TrainedClassifier:
    """Read a classifier written by :func:`save_classifier`.

    Args:
      path: the path given to :func:`save_classifier` (suffix optional).
      basis_id: the expression basis the caller's features come from; raises
        if the classifier was trained on another one (skipped when either is
        ``None``).

    Returns:
      :class:`~classifier.ecoc.TrainedClassifier`.

    Raises:
      FileNotFoundError: a file is missing.
      ValueError: wrong format or version, corrupted or inconsistent arrays,
        or a basis mismatch.
    """
    npz_path, json_path = _paths(path)
    for file in (npz_path, json_path):
        if not file.is_file():
            raise FileNotFoundError(f"classifier file not found: {file}")
    try:
        metadata = json.loads(json_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{json_path}: not valid JSON ({error})") from error
    if metadata.get("format") != FORMAT or metadata.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{json_path}: expected format {FORMAT!r} version {FORMAT_VERSION}, "
            f"got {metadata.get('format')!r} version {metadata.get('version')!r}"
        )
    stored_basis = metadata.get("basis_id")
    if basis_id is not None and stored_basis is not None and basis_id != stored_basis:
        raise ValueError(
            f"{json_path}: the classifier was trained on features of expression basis {stored_basis!r}, "
            f"not {basis_id!r}; retrain it on this basis"
        )
    if hashlib.sha256(npz_path.read_bytes()).hexdigest() != metadata.get("npz_sha256"):
        raise ValueError(f"{npz_path}: checksum does not match {json_path.name} (file changed or corrupted)")

    with np.load(npz_path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    for name, spec in metadata["arrays"].items():
        if name not in arrays or list(arrays[name].shape) != spec["shape"]:
            raise ValueError(f"{npz_path}: array {name!r} missing or not of shape {spec['shape']}")

    kind = metadata["learner_kind"]
    if kind not in _LEARNER_FIELDS:
        raise ValueError(f"{json_path}: unknown learner kind {kind!r}")
    cls, fields = _LEARNER_FIELDS[kind]
    values = {name: jnp.asarray(arrays[f"learners.{name}"]) for name in fields}
    if kind == "nystroem":
        values["linear"] = LinearSVMs(
            **{name: jnp.asarray(arrays[f"learners.linear.{name}"]) for name in _LEARNER_FIELDS["linear"][1]}
        )
    learners = cls(**values)
    class_names = tuple(metadata["class_names"])
    coding = jnp.asarray(arrays["coding"])
    if coding.shape[0] != len(class_names) or arrays["feature_mean"].shape != (metadata["n_features"],):
        raise ValueError(f"{json_path}: class names or feature size disagree with the stored arrays")
    return TrainedClassifier(
        coding=coding,
        feature_mean=jnp.asarray(arrays["feature_mean"]),
        feature_scale=jnp.asarray(arrays["feature_scale"]),
        learners=learners,
        temperature=jnp.asarray(arrays["temperature"]),
        config=_config_from_json(metadata["config"]),
        class_names=class_names,
        basis_id=stored_basis,
    )
