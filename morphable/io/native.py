"""The library's native model file: an uncompressed ``.npz`` with a format version.

Arrays are stored as they are (float32 bases, int32 triangles) and metadata as a
JSON string, so saving and loading round-trips exactly and loading needs no
pickle. Uncompressed on purpose: the ICT model (≈ 50 MB of bases) loads in a
fraction of a second, which matters more for a cache than disk space.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from morphable.model import MorphableModel, make_model

__all__ = ["save_model", "load_model", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_MAGIC = "deepexp3d-morphable-model"
_ARRAYS = (
    "mean",
    "identity_basis",
    "identity_std",
    "expression_basis",
    "expression_std",
    "expression_lower",
    "expression_upper",
)


def save_model(model: MorphableModel, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` (``.npz``) atomically.

    Examples:
      >>> import numpy as np, tempfile, os
      >>> from morphable.model import make_model
      >>> m = make_model(np.zeros((3, 3)), np.ones((3, 3, 2)), np.ones((3, 3, 1)),
      ...                triangles=[[0, 1, 2]], landmark_indices=[0])
      >>> p = save_model(m, os.path.join(tempfile.mkdtemp(), "m.npz"))
      >>> load_model(p).n_identity
      2
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "magic": _MAGIC,
        "format_version": FORMAT_VERSION,
        "landmark_indices": list(model.landmark_indices),
        "contour_right": list(model.contour_right),
        "contour_left": list(model.contour_left),
        "expression_names": list(model.expression_names),
        "expression_kind": model.expression_kind,
        "units": model.units,
        "name": model.name,
    }
    arrays = {name: np.asarray(getattr(model, name)) for name in _ARRAYS}
    arrays["triangles"] = model.triangles
    arrays["metadata"] = np.array(json.dumps(meta))
    partial = path.with_name(path.name + ".part")
    try:
        with open(partial, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def load_model(path: str | os.PathLike) -> MorphableModel:
    """Read a model written by :func:`save_model`.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file is not a native model, is truncated/corrupt, or has
        an unsupported format version; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a deepexp3d model file (not an .npz archive, or truncated)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "metadata" not in data.files:
                raise ValueError(f"{path}: not a deepexp3d model file (no metadata entry)")
            meta = json.loads(str(data["metadata"]))
            if meta.get("magic") != _MAGIC:
                raise ValueError(f"{path}: not a deepexp3d model file")
            if meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(
                    f"{path}: format version {meta.get('format_version')} is not supported "
                    f"(this library reads version {FORMAT_VERSION})"
                )
            missing = [name for name in (*_ARRAYS, "triangles") if name not in data.files]
            if missing:
                raise ValueError(f"{path}: missing arrays {missing}")
            arrays = {name: data[name] for name in (*_ARRAYS, "triangles")}
    except (zipfile.BadZipFile, EOFError, OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: corrupt or truncated model file ({error})") from error
    return make_model(
        arrays["mean"],
        arrays["identity_basis"],
        arrays["expression_basis"],
        triangles=arrays["triangles"],
        landmark_indices=meta["landmark_indices"],
        identity_std=arrays["identity_std"],
        expression_std=arrays["expression_std"],
        expression_lower=arrays["expression_lower"],
        expression_upper=arrays["expression_upper"],
        contour_right=meta["contour_right"],
        contour_left=meta["contour_left"],
        expression_names=meta["expression_names"],
        expression_kind=meta["expression_kind"],
        units=meta["units"],
        name=meta["name"],
    )
