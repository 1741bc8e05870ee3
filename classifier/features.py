"""Expression features of labelled face images: the classifier's input from photos.

* :func:`read_labels_csv` reads a CSV of labelled images (``path`` or ``file``,
  ``label``, optional ``subject``; paths relative to the CSV's folder).
* :func:`expression_features` detects the faces of every image, fits the
  morphable model to the most confident one (:func:`fitting.faces.fit_faces`)
  and returns its expression coefficients, one row per image. An image without
  a usable face gets a NaN row and ``found = False``: rows are never dropped, so
  row i always belongs to image i and callers decide (and report) what to do
  with the missing ones.

Fitting a thousand images takes minutes, so the features can be kept in an
on-disk cache: a folder holding one ``.npz`` per pipeline (expression basis id
of the model, detector and fit configuration), whose entries are keyed by the
image's resolved path, size and modification time. A changed file, another
model or another detector setting is a cache miss, never a stale row.

Examples:
  >>> import tempfile, pathlib
  >>> folder = pathlib.Path(tempfile.mkdtemp())
  >>> _ = (folder / "a.jpg").write_bytes(b"x"); _ = (folder / "b.jpg").write_bytes(b"x")
  >>> _ = (folder / "labels.csv").write_text("file,label,subject\\na.jpg,happy,s1\\nb.jpg,sad,s2\\n")
  >>> labelled = read_labels_csv(folder / "labels.csv")
  >>> [p.name for p in labelled.paths], labelled.labels.tolist(), labelled.subjects.tolist()
  (['a.jpg', 'b.jpg'], ['happy', 'sad'], ['s1', 's2'])
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from fitting.config import ImageFitConfig

__all__ = [
    "LabelledImages",
    "ExpressionFeatures",
    "read_labels_csv",
    "expression_features",
    "feature_cache_path",
]

PathLike = Union[str, os.PathLike]

# Column names accepted for the image path, in order of preference.
_PATH_COLUMNS = ("path", "file")
# New cache entries are written out after this many images, so an interrupted
# extraction resumes from the last save.
_CACHE_SAVE_EVERY = 64
_CACHE_FORMAT = "deepexp3d.expression_features.v1"


@dataclasses.dataclass(frozen=True)
class LabelledImages:
    """Images with their class label and, optionally, their subject.

    Attributes:
      paths: n image paths (absolute or relative to the working directory).
      labels: ``(n,) str`` class names.
      subjects: ``(n,) str`` subject (identity group) of each image, or ``None``.
      source: the CSV file they were read from (``None`` when built in code).
    """

    paths: tuple[Path, ...]
    labels: np.ndarray
    subjects: Optional[np.ndarray] = None
    source: Optional[Path] = None

    def __post_init__(self):
        n = len(self.paths)
        if np.shape(self.labels) != (n,):
            raise ValueError(f"labels: expected shape ({n},) like paths, got {np.shape(self.labels)}")
        if self.subjects is not None and np.shape(self.subjects) != (n,):
            raise ValueError(f"subjects: expected shape ({n},) like paths, got {np.shape(self.subjects)}")

    def __len__(self) -> int:
        return len(self.paths)


@dataclasses.dataclass(frozen=True)
class ExpressionFeatures:
    """Expression coefficients of the most confident face of each image.

    Attributes:
      features: ``(n, n_e) float32`` expression coefficients (model units:
        blendshape weights in [0, 1] for ICT); NaN rows where ``found`` is False.
      found: ``(n,) bool`` a face was detected and the fit is valid.
      detected: ``(n,) bool`` a face was detected (``detected & ~found``: the
        fit failed, e.g. degenerate landmarks).
      score: ``(n,) float32`` detector confidence of the fitted face, NaN without one.
      rmse_normalised: ``(n,) float32`` landmark RMSE of the fit divided by the
        outer-eye-corner distance, NaN without a face.
      cached: ``(n,) bool`` the row came from the cache.
      paths: the n images.
      basis_id: expression-basis id of the model
        (:func:`classifier.persistence.expression_basis_id`).
      expression_names: the model's ``n_e`` expression component names.
    """

    features: np.ndarray
    found: np.ndarray
    detected: np.ndarray
    score: np.ndarray
    rmse_normalised: np.ndarray
    cached: np.ndarray
    paths: tuple[Path, ...]
    basis_id: str
    expression_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)


# --- labels -------------------------------------------------------------------------------------


def read_labels_csv(path: PathLike) -> LabelledImages:
    """Read a CSV of labelled images.

    The header must name an image column (``path``, or ``file`` as in the
    emotions-wild set) and a ``label`` column; a ``subject`` column, when
    present, groups images of one person for subject-disjoint folds. Other
    columns are ignored. Relative image paths are relative to the CSV's folder.

    Args:
      path: the CSV file (UTF-8, comma-separated, one header row).

    Returns:
      :class:`LabelledImages` with absolute paths, in file order.

    Raises:
      FileNotFoundError: the CSV or any listed image is missing (the message
        names the CSV, the number missing and the first few).
      ValueError: a required column is missing, the file has no rows, or a row
        has an empty path, label or subject.

    Examples:
      >>> import tempfile, pathlib
      >>> folder = pathlib.Path(tempfile.mkdtemp())
      >>> _ = (folder / "labels.csv").write_text("name,label\\nx.jpg,happy\\n")
      >>> read_labels_csv(folder / "labels.csv")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: ...labels.csv: no image column: expected one of 'path', 'file'; found columns name, label
    """
    csv_path = Path(path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"labels CSV not found: {csv_path}")
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = columns
        path_column = next((c for c in _PATH_COLUMNS if c in columns), None)
        if path_column is None:
            raise ValueError(
                f"{csv_path}: no image column: expected one of "
                f"{', '.join(repr(c) for c in _PATH_COLUMNS)}; found columns {', '.join(columns) or '(none)'}"
            )
        if "label" not in columns:
            raise ValueError(f"{csv_path}: no 'label' column; found columns {', '.join(columns)}")
        has_subject = "subject" in columns
        paths, labels, subjects = [], [], []
        for line, row in enumerate(reader, start=2):
            cells = {key: (value or "").strip() for key, value in row.items() if key is not None}
            wanted = [path_column, "label"] + (["subject"] if has_subject else [])
            empty = [column for column in wanted if not cells.get(column)]
            if empty:
                raise ValueError(f"{csv_path}, line {line}: empty {', '.join(empty)}")
            image = Path(cells[path_column])
            paths.append(image if image.is_absolute() else csv_path.parent / image)
            labels.append(cells["label"])
            if has_subject:
                subjects.append(cells["subject"])
    if not paths:
        raise ValueError(f"{csv_path}: no rows after the header")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5])
        raise FileNotFoundError(
            f"{csv_path}: {len(missing)} of {len(paths)} listed images not found "
            f"(paths are relative to the CSV's folder): {shown}{' ...' if len(missing) > 5 else ''}"
        )
    return LabelledImages(
        paths=tuple(p.resolve() for p in paths),
        labels=np.asarray(labels, dtype=str),
        subjects=np.asarray(subjects, dtype=str) if has_subject else None,
        source=csv_path.resolve(),
    )


# --- cache --------------------------------------------------------------------------------------


def _pipeline_id(basis_id: str, detector, config: ImageFitConfig) -> str:
    return f"{_CACHE_FORMAT}\nbasis={basis_id}\ndetector={detector!r}\nconfig={config!r}"


def feature_cache_path(cache: PathLike, basis_id: str, detector, config: ImageFitConfig = ImageFitConfig()) -> Path:
    """The cache file of one pipeline (model basis, detector settings, fit configuration).

    Args:
      cache: the cache folder.
      basis_id: expression-basis id of the model.
      detector: the detector object (its ``repr`` names its settings).
      config: the fit configuration.

    Returns:
      ``cache / "expression-features-<hash>.npz"``.
    """
    digest = hashlib.sha256(_pipeline_id(basis_id, detector, config).encode()).hexdigest()[:16]
    return Path(cache) / f"expression-features-{digest}.npz"


def _file_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}"


def _load_cache(file: Path, pipeline: str, n_expression: int) -> dict[str, tuple]:
    if not file.is_file():
        return {}
    try:
        with np.load(file, allow_pickle=False) as data:
            if str(data["pipeline"]) != pipeline or data["features"].shape[1:] != (n_expression,):
                warnings.warn(f"feature cache {file} belongs to another pipeline; ignoring it", stacklevel=3)
                return {}
            columns = [data[name] for name in ("features", "found", "detected", "score", "rmse_normalised")]
            keys = data["keys"].tolist()
    except (OSError, ValueError, KeyError) as error:
        warnings.warn(f"feature cache {file} is unreadable ({error}); recomputing", stacklevel=3)
        return {}
    return {key: tuple(column[i] for column in columns) for i, key in enumerate(keys)}


def _save_cache(file: Path, pipeline: str, entries: dict[str, tuple], n_expression: int) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    keys = list(entries)
    rows = [entries[k] for k in keys]
    temporary = file.with_name(f".{file.name}.{os.getpid()}.tmp.npz")
    np.savez(
        temporary,
        pipeline=np.asarray(pipeline),
        keys=np.asarray(keys, dtype=str),
        features=np.asarray([r[0] for r in rows], np.float32).reshape(len(rows), n_expression),
        found=np.asarray([r[1] for r in rows], bool),
        detected=np.asarray([r[2] for r in rows], bool),
        score=np.asarray([r[3] for r in rows], np.float32),
        rmse_normalised=np.asarray([r[4] for r in rows], np.float32),
    )
    # Atomic replace: a reader never sees a half-written cache.
    os.replace(temporary, file)


# --- extraction ---------------------------------------------------------------------------------


def _fit_one(image_path: Path, model, detector, config: ImageFitConfig, n_expression: int) -> tuple:
    from fitting.faces import fit_faces
    from fitting.media import read_image

    faces = fit_faces(read_image(image_path), model, detector=detector, config=config, max_faces=1)
    if not faces:
        nan = np.float32(np.nan)
        return np.full(n_expression, np.nan, np.float32), False, False, nan, nan
    best = max(faces, key=lambda face: float(face.score))
    valid = bool(np.asarray(best.fit.valid))
    expression = np.asarray(best.fit.expression, np.float32).reshape(n_expression)
    if not valid or not np.all(np.isfinite(expression)):
        expression, valid = np.full(n_expression, np.nan, np.float32), False
    rmse = np.float32(np.asarray(best.fit.rmse_normalised))
    return expression, valid, True, np.float32(best.score), rmse


def expression_features(
    image_paths: Sequence[PathLike],
    model,
    *,
    detector=None,
    cache: Optional[PathLike] = None,
    progress: bool = True,
    config: ImageFitConfig = ImageFitConfig(),
) -> ExpressionFeatures:
    """Expression coefficients of the most confident face in each image.

    For every image: read it (RGB), detect faces and fit the model to the
    68 landmarks of the most confident one (:func:`fitting.faces.fit_faces`
    with ``max_faces=1``), keep its expression coefficients.

    Args:
      image_paths: n image files.
      model: the :class:`~morphable.model.MorphableModel` to fit (e.g.
        ``load_ict(region="face")``).
      detector: a landmark detector (``detect(image) -> FaceDetection``);
        default one :class:`fitting.detection.DlibDetector` for all images.
      cache: a folder for the on-disk feature cache, or ``None`` for none.
      progress: show a tqdm progress bar.
      config: the fit configuration (:class:`fitting.config.ImageFitConfig`).

    Returns:
      :class:`ExpressionFeatures`, row i for image i; images without a usable
      face have a NaN row and ``found[i] = False``.

    Raises:
      FileNotFoundError: an image is missing (checked for all before any work).
      fitting.media.MediaError: an image cannot be decoded (names the file).
      ValueError: ``image_paths`` is empty.

    Examples:
      >>> from morphable.io import load_ict                      # doctest: +SKIP
      >>> result = expression_features(["face.jpg"], load_ict(region="face"))  # doctest: +SKIP
      >>> result.features.shape, bool(result.found[0])           # doctest: +SKIP
      ((1, 53), True)
    """
    from tqdm.auto import tqdm

    from classifier.persistence import expression_basis_id

    paths = tuple(Path(p) for p in image_paths)
    if not paths:
        raise ValueError("image_paths: no images given")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5])
        raise FileNotFoundError(f"image_paths: {len(missing)} images not found: {shown}")
    if detector is None:
        from fitting.detection import DlibDetector

        detector = DlibDetector()
    basis_id = expression_basis_id(model)
    n_expression = int(model.n_expression)

    cache_file, pipeline, entries = None, _pipeline_id(basis_id, detector, config), {}
    if cache is not None:
        cache_file = feature_cache_path(cache, basis_id, detector, config)
        entries = _load_cache(cache_file, pipeline, n_expression)

    n = len(paths)
    features = np.full((n, n_expression), np.nan, np.float32)
    found = np.zeros(n, bool)
    detected = np.zeros(n, bool)
    score = np.full(n, np.nan, np.float32)
    rmse = np.full(n, np.nan, np.float32)
    cached = np.zeros(n, bool)
    unsaved = 0
    with tqdm(total=n, desc="expression features", unit="image", disable=not progress) as bar:
        for i, path in enumerate(paths):
            key = _file_key(path)
            if key in entries:
                row, cached[i] = entries[key], True
            else:
                row = _fit_one(path, model, detector, config, n_expression)
                if cache_file is not None:
                    entries[key] = row
                    unsaved += 1
                    if unsaved >= _CACHE_SAVE_EVERY:
                        _save_cache(cache_file, pipeline, entries, n_expression)
                        unsaved = 0
            features[i], found[i], detected[i], score[i], rmse[i] = row
            bar.update(1)
            bar.set_postfix(cached=int(cached.sum()), without_face=int(i + 1 - detected[: i + 1].sum()))
    if cache_file is not None and unsaved:
        _save_cache(cache_file, pipeline, entries, n_expression)
    return ExpressionFeatures(
        features=features,
        found=found,
        detected=detected,
        score=score,
        rmse_normalised=rmse,
        cached=cached,
        paths=paths,
        basis_id=basis_id,
        expression_names=tuple(model.expression_names),
    )
