"""Training shards: the annotation pipeline's output and the regressor's input.

A **shard** is one directory of uncompressed ``.npy`` arrays plus a JSON
metadata file; a dataset is any list of shards. Every per-frame array has the
frame count ``M`` as its first dimension, so any frame is read by index through a
memory map (``np.load(..., mmap_mode="r")``) without reading the rest — the
random access a ``grain`` input pipeline (a ``RandomAccessDataSource``) needs.

Layout of ``<name>/`` (``n_e`` expression, ``n_i`` identity components)::

    metadata.json                 format, counts, expression basis, template, file sizes
    images.npy                    (B,) uint8       all encoded crops (JPEG or PNG) back to back
    image_offsets.npy             (M + 1,) int64   crop m is images[offsets[m]:offsets[m + 1]]
    expression.npy                (M, n_e) float32 target expression coefficients
    expression_uncertainty.npy    (M, n_e) float32 per-coefficient std of the fit (0 = exact/unknown)
    identity.npy                  (M, n_i) float32 identity coefficients (one per video, repeated)
    camera.npy                    (M, 6) float32   weak-perspective camera in crop pixels:
                                                   axis-angle rotation (3, rad), scale (px per model
                                                   unit), translation (2, px); see morphable.camera
    landmarks.npy                 (M, 68, 2) float32  the frame's 68 landmarks in crop pixels
    alignment.npy                 (M, 2, 3) float64   similarity original frame → crop (NaN if unknown)
    rmse.npy                      (M,) float32     fit quality: landmark RMSE of the fit, crop pixels
    frame_index.npy               (M,) int64       frame number in its video
    video_id.npy                  (M,) <U          video id (fixed-width unicode, mmap-able)
    subject_id.npy                (M,) <U          subject id ('' if unknown)

Crops are ``size × size × 3`` uint8 in **RGB** order (convert OpenCV's BGR
frames before writing), aligned with :mod:`fitting.template`.

**Atomicity.** :class:`ShardWriter` writes everything into a hidden sibling
``.<name>.partial-<random>/``, flushes every file to disk, writes
``metadata.json`` last and then renames the directory to ``<name>`` (one
atomic ``rename`` on a POSIX file system). A reader therefore sees either no
shard or a complete one: :func:`find_shards` skips hidden and ``.partial-``
directories, and :class:`ShardDataset` refuses them when named explicitly and
checks every file's size against the metadata (a truncated copy is refused
too). A crash leaves only a ``.partial-`` directory, which
:func:`remove_partial_shards` deletes before a rerun.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from morphable.model import MorphableModel

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "CAMERA_LAYOUT",
    "ShardWriter",
    "ShardDataset",
    "find_shards",
    "remove_partial_shards",
    "read_shard_metadata",
    "encode_image",
    "decode_image",
    "expression_basis_id",
    "camera_to_vector",
]

FORMAT_NAME = "deepexp3d-shard"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
PARTIAL_MARKER = ".partial-"
CAMERA_LAYOUT = ("rotation_x", "rotation_y", "rotation_z", "scale", "translation_x", "translation_y")
"""Meaning of the 6 columns of ``camera.npy`` (a :class:`~morphable.camera.WeakPerspectiveCamera`)."""

_N_LANDMARKS = 68
# Per-frame arrays: name -> (dtype, trailing shape; strings name metadata counts).
_FRAME_ARRAYS: dict[str, tuple[str, tuple]] = {
    "expression": ("float32", ("n_expression",)),
    "expression_uncertainty": ("float32", ("n_expression",)),
    "identity": ("float32", ("n_identity",)),
    "camera": ("float32", (len(CAMERA_LAYOUT),)),
    "landmarks": ("float32", (_N_LANDMARKS, 2)),
    "alignment": ("float64", (2, 3)),
    "rmse": ("float32", ()),
    "frame_index": ("int64", ()),
    "video_id": ("unicode", ()),
    "subject_id": ("unicode", ()),
}
_ENCODINGS = {"jpeg": ".jpg", "png": ".png"}


def expression_basis_id(model: MorphableModel) -> str:
    """A stable id of a model's expression basis, stored in shards and checked by readers.

    ``"<model name>/<kind>-<n_e>/<digest>"`` where the digest hashes the scaled
    basis ``U_exp·σ`` rounded to 1e-4 model units: two bases whose coefficients
    mean different shapes (another model, another SVD sign) get different ids.

    Examples:
      >>> import numpy as np
      >>> from morphable.model import make_model
      >>> m = make_model(np.zeros((3, 3)), np.zeros((3, 3, 1)), np.ones((3, 3, 2)),
      ...                triangles=[[0, 1, 2]], landmark_indices=[0], name="toy")
      >>> expression_basis_id(m)[:10]
      'toy/pca-2/'
    """
    scaled = np.asarray(model.expression_basis, np.float64) * np.asarray(model.expression_std, np.float64)
    rounded = np.round(scaled, 4) + 0.0  # + 0.0 turns −0.0 into 0.0 so the bytes are canonical
    digest = hashlib.sha1(rounded.astype(np.float64).tobytes()).hexdigest()[:12]
    return f"{model.name}/{model.expression_kind}-{model.n_expression}/{digest}"


def camera_to_vector(camera) -> np.ndarray:
    """``(..., 6) float32`` row of ``camera.npy`` from a weak-perspective camera
    (anything with ``rotation (..., 3)``, ``scale (...)``, ``translation (..., 2)``)."""
    rotation = np.asarray(camera.rotation, np.float32)
    scale = np.asarray(camera.scale, np.float32)[..., None]
    translation = np.asarray(camera.translation, np.float32)
    return np.concatenate([rotation, scale, translation], axis=-1)


def encode_image(image: np.ndarray, encoding: str = "jpeg", *, quality: int = 95) -> np.ndarray:
    """Encode an RGB uint8 image ``(H, W, 3)`` to JPEG/PNG bytes as a ``(B,) uint8`` array.

    Examples:
      >>> import numpy as np
      >>> image = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
      >>> bool((decode_image(encode_image(image, "png")) == image).all())
      True
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if encoding not in _ENCODINGS:
        raise ValueError(f"encoding: expected one of {sorted(_ENCODINGS)}, got {encoding!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if encoding == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    # OpenCV encoders expect BGR; the shards hold RGB.
    ok, buffer = cv2.imencode(_ENCODINGS[encoding], np.ascontiguousarray(image[:, :, ::-1]), params)
    if not ok:
        raise ValueError("image: OpenCV could not encode it")
    return np.asarray(buffer, dtype=np.uint8).reshape(-1)


def decode_image(encoded) -> np.ndarray:
    """Decode JPEG/PNG bytes (``(B,) uint8`` or ``bytes``) to an RGB ``(H, W, 3) uint8`` image.

    Raises:
      ValueError: when the bytes are not a decodable image.
    """
    buffer = np.frombuffer(encoded, dtype=np.uint8) if isinstance(encoded, (bytes, bytearray)) else encoded
    image = cv2.imdecode(np.ascontiguousarray(buffer, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("encoded: not a decodable JPEG/PNG image")
    return image[:, :, ::-1]


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_partial_name(name: str) -> bool:
    return name.startswith(".") or PARTIAL_MARKER in name


class ShardWriter:
    """Accumulates frames and writes them as one shard, atomically.

    Use as a context manager: on normal exit the shard is finished (renamed into
    place); on an exception nothing is left behind but possibly a ``.partial-``
    directory if the process dies mid-write.

    Args:
      path: final shard directory (must not exist).
      expression_names: names of the ``n_e`` expression components.
      expression_basis: the basis id (:func:`expression_basis_id`).
      n_identity: ``n_i``.
      image_encoding: ``"jpeg"`` (default; ~15 KB per 224² crop) or ``"png"`` (lossless).
      jpeg_quality: JPEG quality 1–100 (default 95).
      image_size: crop side in pixels (default 224).
      template: optional :class:`fitting.template.Template` the crops are aligned
        to; stored so readers can check that all shards share it.
      extra: optional JSON-serialisable dict stored in the metadata (e.g. the
        annotation settings).

    Examples:
      >>> import numpy as np, tempfile, pathlib
      >>> root = pathlib.Path(tempfile.mkdtemp())
      >>> with ShardWriter(root / "shard-0", expression_names=["e0"], expression_basis="toy",
      ...                  n_identity=2, image_size=8, image_encoding="png") as writer:
      ...     writer.add(image=np.zeros((8, 8, 3), np.uint8), expression=[0.5], identity=[0, 0],
      ...                camera=np.zeros(6), landmarks=np.zeros((68, 2)), video_id="v", frame_index=3)
      >>> data = ShardDataset(root)
      >>> len(data), data[0]["video_id"], float(data[0]["expression"][0])
      (1, 'v', 0.5)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        expression_names: Sequence[str],
        expression_basis: str,
        n_identity: int,
        image_encoding: str = "jpeg",
        jpeg_quality: int = 95,
        image_size: int = 224,
        template=None,
        extra: dict | None = None,
    ):
        self.path = Path(path)
        if _is_partial_name(self.path.name):
            raise ValueError(f"path: shard names must not start with '.' or contain {PARTIAL_MARKER!r}: {self.path}")
        if self.path.exists():
            raise FileExistsError(f"path: shard {self.path} already exists")
        if image_encoding not in _ENCODINGS:
            raise ValueError(f"image_encoding: expected one of {sorted(_ENCODINGS)}, got {image_encoding!r}")
        if not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality: must be in [1, 100], got {jpeg_quality}")
        self.expression_names = tuple(str(n) for n in expression_names)
        self.expression_basis = str(expression_basis)
        self.n_identity = int(n_identity)
        self.image_encoding = image_encoding
        self.jpeg_quality = int(jpeg_quality)
        self.image_size = int(image_size)
        self.template = template
        self.extra = dict(extra or {})
        json.dumps(self.extra)  # fail now, not after encoding a whole shard
        self._images: list[np.ndarray] = []
        self._columns: dict[str, list] = {name: [] for name in _FRAME_ARRAYS}
        self._done = False

    def __len__(self) -> int:
        return len(self._images)

    @property
    def n_expression(self) -> int:
        """``n_e``."""
        return len(self.expression_names)

    def add(
        self,
        *,
        expression,
        identity,
        camera,
        landmarks,
        video_id: str,
        frame_index: int,
        image: np.ndarray | None = None,
        encoded_image=None,
        subject_id: str = "",
        rmse: float = 0.0,
        expression_uncertainty=None,
        alignment=None,
    ) -> None:
        """Append one frame.

        Args:
          expression: ``(n_e,)`` target coefficients.
          identity: ``(n_i,)`` identity coefficients.
          camera: ``(6,)`` (see :data:`CAMERA_LAYOUT`) or a weak-perspective camera, crop pixels.
          landmarks: ``(68, 2)`` crop pixels.
          video_id, frame_index, subject_id: ids.
          image: ``(size, size, 3)`` RGB uint8 aligned crop (encoded here), or
          encoded_image: already-encoded bytes of such a crop (not re-checked).
          rmse: fit RMSE, crop pixels.
          expression_uncertainty: ``(n_e,)`` std of each coefficient (default 0).
          alignment: ``(2, 3)`` original-frame → crop similarity (default NaN: unknown).

        Raises:
          ValueError: on a wrong shape, a non-finite target, or an image of the wrong size.
        """
        if self._done:
            raise RuntimeError("ShardWriter: already finished or aborted")
        if (image is None) == (encoded_image is None):
            raise ValueError("image/encoded_image: give exactly one")
        if image is not None:
            image = np.asarray(image)
            if image.shape != (self.image_size, self.image_size, 3) or image.dtype != np.uint8:
                raise ValueError(
                    f"image: expected ({self.image_size}, {self.image_size}, 3) uint8, got {image.shape} {image.dtype}"
                )
            encoded = encode_image(image, self.image_encoding, quality=self.jpeg_quality)
        else:
            encoded = np.frombuffer(bytes(encoded_image), np.uint8) if not isinstance(encoded_image, np.ndarray) \
                else np.asarray(encoded_image, np.uint8).reshape(-1)
        if hasattr(camera, "rotation"):
            camera = camera_to_vector(camera)
        values = {
            "expression": np.asarray(expression, np.float32),
            "expression_uncertainty": np.zeros(self.n_expression, np.float32)
            if expression_uncertainty is None
            else np.asarray(expression_uncertainty, np.float32),
            "identity": np.asarray(identity, np.float32),
            "camera": np.asarray(camera, np.float32),
            "landmarks": np.asarray(landmarks, np.float32),
            "alignment": np.full((2, 3), np.nan) if alignment is None else np.asarray(alignment, np.float64),
            "rmse": np.float32(rmse),
            "frame_index": np.int64(frame_index),
            "video_id": str(video_id),
            "subject_id": str(subject_id),
        }
        sizes = {"n_expression": self.n_expression, "n_identity": self.n_identity}
        for name, (_, trailing) in _FRAME_ARRAYS.items():
            expected = tuple(sizes.get(d, d) for d in trailing)
            value = values[name]
            if isinstance(value, np.ndarray) and value.shape != expected:
                raise ValueError(f"{name}: expected shape {expected}, got {value.shape}")
        if not np.all(np.isfinite(values["expression"])):
            raise ValueError("expression: contains NaN or infinite values")
        self._images.append(encoded)
        for name, value in values.items():
            self._columns[name].append(value)

    def finish(self) -> Path:
        """Write the arrays and metadata, then rename the shard into place; returns its path.

        An empty writer writes nothing and returns the (non-existent) path.
        """
        if self._done:
            raise RuntimeError("ShardWriter: already finished or aborted")
        self._done = True
        if not self._images:
            return self.path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.parent / f".{self.path.name}{PARTIAL_MARKER}{uuid.uuid4().hex[:12]}"
        partial.mkdir()
        try:
            offsets = np.zeros(len(self._images) + 1, np.int64)
            offsets[1:] = np.cumsum([len(b) for b in self._images])
            arrays = {
                "images": np.concatenate(self._images) if self._images else np.zeros(0, np.uint8),
                "image_offsets": offsets,
            }
            for name, (dtype, _) in _FRAME_ARRAYS.items():
                column = self._columns[name]
                arrays[name] = np.array(column, dtype=str) if dtype == "unicode" else np.stack(column).astype(dtype)
            files = {}
            for name, array in arrays.items():
                file = partial / f"{name}.npy"
                with open(file, "wb") as handle:
                    np.save(handle, array, allow_pickle=False)
                    handle.flush()
                    os.fsync(handle.fileno())
                files[file.name] = file.stat().st_size
            metadata = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "count": len(self._images),
                "image": {
                    "encoding": self.image_encoding,
                    "jpeg_quality": self.jpeg_quality if self.image_encoding == "jpeg" else None,
                    "height": self.image_size,
                    "width": self.image_size,
                    "channels": 3,
                    "color_order": "rgb",
                },
                "n_expression": self.n_expression,
                "n_identity": self.n_identity,
                "expression_basis": {"id": self.expression_basis, "names": list(self.expression_names)},
                "camera": {"kind": "weak_perspective", "layout": list(CAMERA_LAYOUT), "frame": "crop"},
                "template": None if self.template is None else self.template.to_dict(),
                "videos": sorted(set(self._columns["video_id"])),
                "files": files,
                "extra": self.extra,
            }
            meta_file = partial / METADATA_FILE
            with open(meta_file, "w") as handle:
                json.dump(metadata, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            _fsync_path(partial)
            # The commit point: a rename is atomic, so readers never see a half shard.
            os.rename(partial, self.path)
            _fsync_path(self.path.parent)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        finally:
            self._images.clear()
            for column in self._columns.values():
                column.clear()
        return self.path

    def abort(self) -> None:
        """Discard the buffered frames; nothing is written."""
        self._done = True
        self._images.clear()
        for column in self._columns.values():
            column.clear()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._done:
            return
        if exc_type is None:
            self.finish()
        else:
            self.abort()


def find_shards(root: str | os.PathLike) -> list[Path]:
    """Complete shards directly under ``root`` (sorted by name); partial ones are skipped.

    A directory counts when its name is not hidden, has no ``.partial-`` marker
    and it holds ``metadata.json`` (written last, before the rename). ``root``
    itself is returned when it is a shard.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: {root} is not a directory")
    if (root / METADATA_FILE).is_file() and not _is_partial_name(root.name):
        return [root]
    return sorted(
        child for child in root.iterdir()
        if child.is_dir() and not _is_partial_name(child.name) and (child / METADATA_FILE).is_file()
    )


def remove_partial_shards(root: str | os.PathLike) -> list[Path]:
    """Delete the ``.partial-`` directories a crashed writer left under ``root``; returns them.

    Only call this when no writer is running on ``root`` (e.g. at the start of a rerun).
    """
    root = Path(root)
    removed = []
    if root.is_dir():
        for child in root.iterdir():
            if child.is_dir() and PARTIAL_MARKER in child.name:
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    return sorted(removed)


def read_shard_metadata(path: str | os.PathLike) -> dict:
    """Validate one shard and return its metadata.

    Checks: the directory is not a partial shard; the format and version; every
    array file exists with the size recorded in the metadata (truncation); the
    arrays' dtypes and shapes match the counts; the image offsets are monotonic
    and end at the buffer's length.

    Raises:
      ValueError: naming the shard and what is wrong.
    """
    path = Path(path)
    if _is_partial_name(path.name):
        raise ValueError(f"{path}: a partial shard (its writer never renamed it); not trusted")
    meta_file = path / METADATA_FILE
    if not meta_file.is_file():
        raise ValueError(f"{path}: no {METADATA_FILE}; not a complete shard")
    try:
        metadata = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{meta_file}: unreadable metadata ({error})") from error
    if metadata.get("format") != FORMAT_NAME or metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{meta_file}: format {metadata.get('format')!r} v{metadata.get('format_version')}, "
            f"expected {FORMAT_NAME!r} v{FORMAT_VERSION}"
        )
    count = int(metadata["count"])
    files = metadata.get("files", {})
    for name in ("images", "image_offsets", *_FRAME_ARRAYS):
        file = path / f"{name}.npy"
        if not file.is_file():
            raise ValueError(f"{path}: missing {file.name}")
        if files.get(file.name) != file.stat().st_size:
            raise ValueError(
                f"{file}: size {file.stat().st_size} bytes, metadata says {files.get(file.name)} (truncated or replaced)"
            )
    sizes = {"n_expression": int(metadata["n_expression"]), "n_identity": int(metadata["n_identity"])}
    for name, (dtype, trailing) in _FRAME_ARRAYS.items():
        array = np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        expected = (count, *(sizes.get(d, d) for d in trailing))
        dtype_ok = array.dtype.kind == "U" if dtype == "unicode" else array.dtype == np.dtype(dtype)
        if array.shape != expected or not dtype_ok:
            raise ValueError(f"{path / (name + '.npy')}: {array.shape} {array.dtype}, expected {expected} {dtype}")
    if len(metadata["expression_basis"]["names"]) != sizes["n_expression"]:
        raise ValueError(f"{meta_file}: {len(metadata['expression_basis']['names'])} expression names for n_e = "
                         f"{sizes['n_expression']}")
    offsets = np.load(path / "image_offsets.npy", allow_pickle=False)
    images = np.load(path / "images.npy", mmap_mode="r", allow_pickle=False)
    if (
        offsets.shape != (count + 1,)
        or offsets.dtype != np.int64
        or images.dtype != np.uint8
        or images.ndim != 1
        or offsets[0] != 0
        or np.any(np.diff(offsets) <= 0)
        or offsets[-1] != images.shape[0]
    ):
        raise ValueError(f"{path}: inconsistent image offsets / buffer")
    return metadata


class ShardDataset:
    """Random access over the frames of one or more shards (a grain ``RandomAccessDataSource``).

    ``dataset[k]`` returns a dict for global frame ``k`` (frames numbered shard
    after shard, in the given order):

    * ``"image"``: ``(B,) uint8`` encoded crop (decode with :func:`decode_image`),
    * ``"expression"``, ``"expression_uncertainty"``: ``(n_e,) float32``,
    * ``"identity"``: ``(n_i,) float32``; ``"camera"``: ``(6,) float32``;
      ``"landmarks"``: ``(68, 2) float32``; ``"alignment"``: ``(2, 3) float64``,
    * ``"rmse"``: float32; ``"frame_index"``: int64; ``"video_id"``,
      ``"subject_id"``: str; ``"index"``: the global index ``k``.

    Arrays are memory-mapped lazily in each process, so the object pickles small
    and works in grain worker processes.

    Args:
      shards: a shard directory, a directory of shards (see :func:`find_shards`)
        or a sequence of either. A shard named explicitly that is partial or
        invalid raises.
      expression_basis: if given, the basis id every shard must carry.

    Raises:
      ValueError: on an invalid shard, no frames, or shards that disagree on the
        expression basis, identity size, crop size or template.
    """

    def __init__(self, shards, *, expression_basis: str | None = None):
        if isinstance(shards, (str, os.PathLike)):
            shards = [shards]
        paths: list[Path] = []
        for entry in shards:
            entry = Path(entry)
            if entry.is_dir() and not (entry / METADATA_FILE).exists() and not _is_partial_name(entry.name):
                paths.extend(find_shards(entry))
            else:
                paths.append(entry)
        if not paths:
            raise ValueError(f"shards: no complete shard found in {[str(s) for s in shards]}")
        self._paths = tuple(paths)
        self._metadata = tuple(read_shard_metadata(p) for p in paths)
        first = self._metadata[0]
        for path, meta in zip(paths, self._metadata):
            for key, what in (
                (lambda m: m["expression_basis"], "expression basis"),
                (lambda m: m["n_identity"], "identity size"),
                (lambda m: (m["image"]["height"], m["image"]["width"]), "crop size"),
                (lambda m: m["template"], "template"),
            ):
                if key(meta) != key(first):
                    raise ValueError(f"{path}: {what} differs from {paths[0]}'s")
        if expression_basis is not None and first["expression_basis"]["id"] != expression_basis:
            raise ValueError(
                f"{paths[0]}: expression basis {first['expression_basis']['id']!r}, expected {expression_basis!r}"
            )
        counts = [int(m["count"]) for m in self._metadata]
        self._starts = tuple(int(s) for s in np.concatenate([[0], np.cumsum(counts)]))
        self._arrays: dict[int, dict[str, np.ndarray]] = {}

    # The opened memory maps are per process; a pickled copy reopens its own.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state

    def __len__(self) -> int:
        return self._starts[-1]

    def __repr__(self) -> str:
        # grain validates a restored iterator against repr(source): keep it free
        # of absolute paths so a moved dataset still resumes.
        names = ",".join(p.name for p in self._paths)
        return f"ShardDataset(frames={len(self)}, shards=[{names}], basis={self.expression_basis!r})"

    @property
    def shard_paths(self) -> tuple[Path, ...]:
        """The shard directories, in index order."""
        return self._paths

    @property
    def metadata(self) -> tuple[dict, ...]:
        """Each shard's metadata dict."""
        return self._metadata

    @property
    def expression_basis(self) -> str:
        """The expression basis id shared by all shards."""
        return self._metadata[0]["expression_basis"]["id"]

    @property
    def expression_names(self) -> tuple[str, ...]:
        """Names of the ``n_e`` components."""
        return tuple(self._metadata[0]["expression_basis"]["names"])

    @property
    def n_expression(self) -> int:
        """``n_e``."""
        return int(self._metadata[0]["n_expression"])

    @property
    def n_identity(self) -> int:
        """``n_i``."""
        return int(self._metadata[0]["n_identity"])

    @property
    def image_size(self) -> int:
        """Side of the stored crops, pixels."""
        return int(self._metadata[0]["image"]["height"])

    @property
    def template(self):
        """The :class:`fitting.template.Template` of the crops, or ``None`` if not recorded."""
        from fitting.template import Template

        data = self._metadata[0]["template"]
        return None if data is None else Template.from_dict(data)

    def _open(self, shard: int) -> dict[str, np.ndarray]:
        arrays = self._arrays.get(shard)
        if arrays is None:
            path = self._paths[shard]
            arrays = {
                name: np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                for name in ("images", "image_offsets", *_FRAME_ARRAYS)
            }
            self._arrays[shard] = arrays
        return arrays

    def locate(self, index: int) -> tuple[int, int]:
        """``(shard number, row in that shard)`` of global frame ``index``."""
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} frames")
        shard = bisect.bisect_right(self._starts, index) - 1
        return shard, index - self._starts[shard]

    def __getitem__(self, index) -> dict:
        shard, row = self.locate(index)
        arrays = self._open(shard)
        start, stop = arrays["image_offsets"][row], arrays["image_offsets"][row + 1]
        record = {"image": np.array(arrays["images"][start:stop])}
        for name, (dtype, _) in _FRAME_ARRAYS.items():
            value = arrays[name][row]
            record[name] = str(value) if dtype == "unicode" else np.array(value)
        record["index"] = int(index) if int(index) >= 0 else int(index) + len(self)
        return record

    def column(self, name: str) -> np.ndarray:
        """One per-frame array over the whole dataset, ``(len(self), ...)`` (read into memory).

        Example: ``dataset.column("expression").mean(0)`` is the predict-the-mean baseline.
        """
        if name not in _FRAME_ARRAYS:
            raise ValueError(f"name: expected one of {sorted(_FRAME_ARRAYS)}, got {name!r}")
        return np.concatenate([np.asarray(self._open(k)[name]) for k in range(len(self._paths))])

    def column_mean(self, name: str) -> np.ndarray:
        """Mean of one per-frame array over all frames, ``(...)`` float64, one shard in memory at a time."""
        if name not in _FRAME_ARRAYS or _FRAME_ARRAYS[name][0] == "unicode":
            raise ValueError(f"name: expected a numeric per-frame array, got {name!r}")
        total = sum(np.asarray(self._open(k)[name], np.float64).sum(axis=0) for k in range(len(self._paths)))
        return total / len(self)

    def image(self, index: int) -> np.ndarray:
        """The decoded RGB crop of frame ``index``, ``(size, size, 3) uint8``."""
        return decode_image(self[index]["image"])

    def videos(self) -> list[str]:
        """Sorted distinct video ids of all shards."""
        return sorted(set().union(*(m["videos"] for m in self._metadata)))
