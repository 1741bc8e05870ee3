"""Readers for the eos model files: the Surrey Face Model (SFM) and its companions.

eos (github.com/patrikhuber/eos) stores its models as cereal binary archives:
little-endian, no magic number, no field names, sizes written just before the
data they describe. This module parses them with NumPy alone, so eos-py is not
needed at run time (the tests use it as an oracle). Everything that reads a
size checks it against the bytes left *before* allocating, so a truncated or
foreign file raises :class:`ValueError` naming the file and the field instead
of an ``IndexError`` or a huge allocation.

Layout of a ``MorphableModel`` archive (``CEREAL_CLASS_VERSION`` 1–4)::

    uint32 class version
    PcaModel shape, PcaModel colour
    [version >= 2] optional<variant<PcaModel, vector<Blendshape>>> expression
    [version >= 3] optional<unordered_map<string, int32>> landmark definitions
    vector<array<double, 2>> texture coordinates
    [version == 4] vector<array<int32, 3>> texture triangle indices

where a ``PcaModel`` is ``mean, orthonormal basis, eigenvalues`` (each an
Eigen matrix: ``int32 rows, int32 cols``, then float32 values column-major)
followed by ``vector<array<int32, 3>> triangles``; a vector is a ``uint64``
count then its items; a string a ``uint64`` length then bytes; an optional a
``bool`` byte "is empty" then the value; a variant an ``int32`` index then the
value; a ``Blendshape`` a name and a deformation vector.

The shipped SFM files are version 1 with an empty colour model; the six
expression blendshapes live in a separate ``vector<Blendshape>`` archive. See
``shared/data/eos-sfm/README.md`` for their contents and licence
(non-commercial use only).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import tomllib
from pathlib import Path
from typing import Union

import numpy as np

from morphable.model import MorphableModel, make_model
from morphable.paths import data_dir

__all__ = [
    "EosPcaModel",
    "EosBlendshapes",
    "EosModelData",
    "LandmarkMapping",
    "read_eos_model",
    "read_eos_blendshapes",
    "read_ibug_mapping",
    "read_model_contours",
    "eos_to_morphable_model",
    "load_sfm",
    "SUPPORTED_MODEL_VERSIONS",
]

SUPPORTED_MODEL_VERSIONS = (1, 2, 3, 4)
"""``MorphableModel`` class versions :func:`read_eos_model` understands.

Version 0 is eos's pre-2017 OpenCV-matrix format, which eos itself rejects.
"""

N_IBUG_LANDMARKS = 68

_SFM_MODEL_FILE = "sfm_shape_3448.bin"
_SFM_BLENDSHAPES_FILE = "expression_blendshapes_3448.bin"
_SFM_MAPPING_FILE = "ibug_to_sfm.txt"
_SFM_CONTOURS_FILE = "sfm_model_contours.json"


@dataclasses.dataclass(frozen=True, eq=False)
class EosPcaModel:
    """One eos ``PcaModel`` (shape, colour or expression), as stored.

    Attributes:
      mean: ``(N, 3) float32``.
      orthonormal_basis: ``(N, 3, k) float32``, columns orthonormal over the
        flattened ``3N`` coordinates.
      eigenvalues: ``(k,) float32`` variances of the components (eos's
        "rescaled" basis is ``orthonormal_basis * sqrt(eigenvalues)``).
      triangles: ``(T, 3) int32`` 0-based vertex indices.
    """

    mean: np.ndarray
    orthonormal_basis: np.ndarray
    eigenvalues: np.ndarray
    triangles: np.ndarray

    @property
    def n_vertices(self) -> int:
        """Number of vertices N (0 for an empty model)."""
        return self.mean.shape[0]


@dataclasses.dataclass(frozen=True, eq=False)
class EosBlendshapes:
    """A list of eos ``Blendshape`` s stacked into one basis.

    Attributes:
      names: one name per blendshape.
      deformations: ``(N, 3, B) float32`` per-vertex offsets added to the mean.
    """

    names: tuple[str, ...]
    deformations: np.ndarray


EosExpressionModel = Union[EosPcaModel, EosBlendshapes]


@dataclasses.dataclass(frozen=True, eq=False)
class EosModelData:
    """The contents of an eos ``MorphableModel`` file, as NumPy arrays.

    The shape model is flattened into the first four fields because it is what
    every caller needs; the rest is ``None`` where the file has nothing.

    Attributes:
      mean: ``(N, 3) float32`` mean shape, model units.
      orthonormal_basis: ``(N, 3, k) float32`` shape PCA basis.
      eigenvalues: ``(k,) float32`` shape PCA variances.
      triangles: ``(T, 3) int32`` 0-based vertex indices.
      texture_coordinates: ``(M, 2) float64`` uv in ``[0, 1]``, one per vertex
        (``M == N``) unless ``texture_triangle_indices`` is given; ``None``
        when the file has none.
      color_model: the colour (albedo) PCA model, ``None`` when stored empty.
      expression_model: a PCA expression model (its mean is added to the
        shape mean by eos), blendshapes, or ``None`` (always ``None`` for
        version 1 files).
      landmark_definitions: landmark name → 0-based vertex index (version 3+).
      texture_triangle_indices: ``(T', 3) int32`` into ``texture_coordinates``
        (version 4), ``None`` when absent or empty.
      version: the file's ``MorphableModel`` class version.
    """

    mean: np.ndarray
    orthonormal_basis: np.ndarray
    eigenvalues: np.ndarray
    triangles: np.ndarray
    texture_coordinates: np.ndarray | None = None
    color_model: EosPcaModel | None = None
    expression_model: EosExpressionModel | None = None
    landmark_definitions: dict[str, int] | None = None
    texture_triangle_indices: np.ndarray | None = None
    version: int = 1

    @property
    def n_vertices(self) -> int:
        """Number of vertices N."""
        return self.mean.shape[0]

    @property
    def shape_model(self) -> EosPcaModel:
        """The shape PCA model as an :class:`EosPcaModel`."""
        return EosPcaModel(self.mean, self.orthonormal_basis, self.eigenvalues, self.triangles)


@dataclasses.dataclass(frozen=True)
class LandmarkMapping:
    """An eos landmark mapping file (e.g. ``ibug_to_sfm.txt``).

    Attributes:
      vertex_for_landmark: 1-based iBUG landmark id → 0-based model vertex.
      contour_right: 1-based iBUG ids of the subject's right jaw contour
        (matched to ``MorphableModel.contour_right`` per fit, not fixed).
      contour_left: likewise for the left side.
    """

    vertex_for_landmark: dict[int, int]
    contour_right: tuple[int, ...] = ()
    contour_left: tuple[int, ...] = ()

    def landmark_indices(self, n_landmarks: int = N_IBUG_LANDMARKS) -> tuple[int, ...]:
        """Vertex per landmark slot, in landmark-id order, ``-1`` where unmapped.

        Returns:
          ``n_landmarks`` vertex indices; slot ``j`` is landmark id ``j + 1``.

        Raises:
          ValueError: if a mapped id is outside ``1..n_landmarks``.

        Examples:
          >>> LandmarkMapping({2: 7}).landmark_indices(3)
          (-1, 7, -1)
        """
        outside = sorted(i for i in self.vertex_for_landmark if not 1 <= i <= n_landmarks)
        if outside:
            raise ValueError(f"landmark ids {outside} are outside 1..{n_landmarks}")
        return tuple(self.vertex_for_landmark.get(i, -1) for i in range(1, n_landmarks + 1))


class _ArchiveReader:
    """Sequential reader of a cereal binary archive held in memory.

    Hand-written because no Python package reads cereal archives; every read
    checks the remaining length first and reports the file, byte offset and
    field on failure.
    """

    def __init__(self, buffer: bytes, path: Path):
        self.buffer = buffer
        self.path = path
        self.position = 0

    @property
    def remaining(self) -> int:
        return len(self.buffer) - self.position

    def error(self, message: str) -> ValueError:
        return ValueError(f"{self.path}: {message}")

    def need(self, n_bytes: int, what: str) -> None:
        if n_bytes > self.remaining:
            raise self.error(
                f"truncated at byte {self.position} while reading {what} "
                f"(needs {n_bytes} bytes, {self.remaining} left of {len(self.buffer)}); "
                "not an eos archive or a damaged copy"
            )

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        item = np.dtype(dtype)
        self.need(count * item.itemsize, what)
        # frombuffer is a view of the file's bytes; copying gives native-order,
        # writable arrays that do not pin the whole file in memory.
        values = np.frombuffer(self.buffer, dtype=item, count=count, offset=self.position)
        self.position += count * item.itemsize
        return values.astype(item.newbyteorder("="), copy=True)

    def scalar(self, dtype: str, what: str) -> int:
        return int(self.array(dtype, 1, what)[0])

    def uint32(self, what: str) -> int:
        return self.scalar("<u4", what)

    def int32(self, what: str) -> int:
        return self.scalar("<i4", what)

    def boolean(self, what: str) -> bool:
        value = self.scalar("u1", what)
        if value > 1:
            raise self.error(f"byte {self.position - 1}: {what} is {value}, expected a bool (0 or 1)")
        return bool(value)

    def count(self, what: str, min_item_bytes: int) -> int:
        start = self.position
        value = self.scalar("<u8", f"the length of {what}")
        if value * min_item_bytes > self.remaining:
            raise self.error(
                f"byte {start}: {what} claims {value} items (at least {value * min_item_bytes} bytes) "
                f"but only {self.remaining} bytes are left; not an eos archive or a damaged copy"
            )
        return value

    def string(self, what: str) -> str:
        length = self.count(what, 1)
        start = self.position
        raw = self.array("u1", length, what).tobytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"byte {start}: {what} is not valid UTF-8") from None

    def matrix(self, what: str) -> np.ndarray:
        """An Eigen float32 matrix: ``(rows, cols)``, stored column-major."""
        start = self.position
        rows = self.int32(f"the row count of {what}")
        cols = self.int32(f"the column count of {what}")
        if rows < 0 or cols < 0:
            raise self.error(f"byte {start}: {what} has negative size {rows} x {cols}")
        values = self.array("<f4", rows * cols, f"{what} ({rows} x {cols} float32)")
        return np.ascontiguousarray(values.reshape(cols, rows).T)

    def index_triples(self, what: str) -> np.ndarray:
        n = self.count(what, 12)
        return self.array("<i4", 3 * n, what).reshape(n, 3)

    def expect_end(self) -> None:
        if self.remaining:
            raise self.error(
                f"{self.remaining} unexpected bytes after the end of the archive at byte {self.position}; "
                "not an eos archive of this kind or a damaged copy"
            )


def _read_file(path, what: str) -> tuple[Path, bytes]:
    path = Path(path)
    try:
        return path, path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{what} not found", str(path)) from None


def _check_indices(reader: _ArchiveReader, indices: np.ndarray, n: int, what: str) -> None:
    bad = (indices < 0) | (indices >= n)
    if bad.any():
        raise reader.error(f"{what}: index {int(indices[bad][0])} out of range for {n} entries")


def _vertex_matrix(reader: _ArchiveReader, flat: np.ndarray, what: str) -> np.ndarray:
    """``(3N, k)`` in eos's x0, y0, z0, x1, ... row order → ``(N, 3, k)``."""
    if flat.shape[0] % 3:
        raise reader.error(f"{what} has {flat.shape[0]} rows, not a multiple of 3 (x, y, z per vertex)")
    return flat.reshape(flat.shape[0] // 3, 3, flat.shape[1])


def _read_pca_model(reader: _ArchiveReader, what: str) -> EosPcaModel:
    mean = reader.matrix(f"the {what} mean")
    basis = reader.matrix(f"the {what} basis")
    eigenvalues = reader.matrix(f"the {what} eigenvalues")
    triangles = reader.index_triples(f"the {what} triangle list")
    # eos writes a default-constructed PcaModel (its "no colour model") as
    # 0x1, 0x0, 0x1 matrices; accept any empty basis with it.
    dimension = mean.shape[0]
    if mean.shape[1] != 1 and mean.size:
        raise reader.error(f"the {what} mean is {mean.shape[0]} x {mean.shape[1]}, expected a column vector")
    if eigenvalues.shape[1] != 1 and eigenvalues.size:
        raise reader.error(f"the {what} eigenvalues are {eigenvalues.shape}, expected a column vector")
    n_components = eigenvalues.shape[0]
    if basis.size == 0 and n_components == 0:
        basis = np.zeros((dimension, 0), np.float32)
    if basis.shape != (dimension, n_components):
        raise reader.error(
            f"the {what} basis is {basis.shape[0]} x {basis.shape[1]}, expected "
            f"{dimension} x {n_components} (mean rows x number of eigenvalues)"
        )
    mean3 = _vertex_matrix(reader, mean.reshape(dimension, 1), f"the {what} mean")[:, :, 0]
    basis3 = _vertex_matrix(reader, basis, f"the {what} basis")
    if dimension:
        _check_indices(reader, triangles, dimension // 3, f"the {what} triangle list")
    return EosPcaModel(mean3, basis3, eigenvalues.reshape(-1), triangles)


def _read_blendshape_list(reader: _ArchiveReader, what: str) -> EosBlendshapes:
    # A blendshape is at least a name length (8) and a matrix header (8).
    n = reader.count(what, 16)
    names, columns = [], []
    for k in range(n):
        names.append(reader.string(f"the name of blendshape {k} of {what}"))
        deformation = reader.matrix(f"the deformation of blendshape {k} ({names[-1]!r})")
        if deformation.shape[1] != 1 and deformation.size:
            raise reader.error(f"blendshape {names[-1]!r} is {deformation.shape}, expected a column vector")
        if columns and deformation.shape[0] != columns[0].shape[0]:
            raise reader.error(
                f"blendshape {names[-1]!r} has {deformation.shape[0]} values, "
                f"blendshape {names[0]!r} has {columns[0].shape[0]}"
            )
        columns.append(deformation.reshape(-1, 1))
    stacked = np.concatenate(columns, axis=1) if columns else np.zeros((0, 0), np.float32)
    return EosBlendshapes(tuple(names), _vertex_matrix(reader, stacked, what))


def read_eos_model(path) -> EosModelData:
    """Read an eos ``MorphableModel`` file (e.g. ``sfm_shape_3448.bin``).

    Args:
      path: the ``.bin`` file (a cereal binary archive, class versions 1–4).

    Returns:
      :class:`EosModelData` with ``mean (N, 3) float32``,
      ``orthonormal_basis (N, 3, k) float32``, ``eigenvalues (k,) float32``,
      ``triangles (T, 3) int32``, ``texture_coordinates (M, 2) float64`` or
      ``None``, and the optional colour/expression models and landmark
      definitions of later versions.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: naming the file, byte offset and field, if it is truncated,
        has an unsupported class version, inconsistent sizes, out-of-range
        triangle indices or trailing bytes (e.g. a text file or a ``.npz``).

    Examples:
      >>> from morphable.paths import data_dir
      >>> sfm = read_eos_model(data_dir() / "eos-sfm" / "sfm_shape_3448.bin")  # doctest: +SKIP
      >>> sfm.mean.shape, sfm.orthonormal_basis.shape, sfm.triangles.shape  # doctest: +SKIP
      ((3448, 3), (3448, 3, 63), (6736, 3))
    """
    path, buffer = _read_file(path, "eos model file")
    reader = _ArchiveReader(buffer, path)
    version = reader.uint32("the MorphableModel class version")
    if version not in SUPPORTED_MODEL_VERSIONS:
        raise reader.error(
            f"MorphableModel class version {version} is not supported (known: "
            f"{', '.join(map(str, SUPPORTED_MODEL_VERSIONS))}); "
            + (
                "version 0 is eos's old OpenCV format, convert it with a recent eos"
                if version == 0
                else "not an eos model file, or one written by a newer eos"
            )
        )
    shape = _read_pca_model(reader, "shape model")
    if shape.n_vertices == 0:
        raise reader.error("the shape model is empty")
    color = _read_pca_model(reader, "colour model")
    if color.n_vertices not in (0, shape.n_vertices):
        raise reader.error(f"the colour model has {color.n_vertices} vertices, the shape model {shape.n_vertices}")

    expression = None
    if version >= 2 and not reader.boolean("the expression model's empty flag"):
        start = reader.position
        kind = reader.int32("the expression model's type index")
        if kind == 0:
            expression = _read_pca_model(reader, "expression model")
            n_expression_vertices = expression.n_vertices
        elif kind == 1:
            expression = _read_blendshape_list(reader, "the expression blendshapes")
            n_expression_vertices = expression.deformations.shape[0]
        else:
            raise reader.error(f"byte {start}: expression model type index {kind}, expected 0 (PCA) or 1 (blendshapes)")
        if n_expression_vertices != shape.n_vertices:
            raise reader.error(
                f"the expression model has {n_expression_vertices} vertices, the shape model {shape.n_vertices}"
            )

    landmark_definitions = None
    if version >= 3 and not reader.boolean("the landmark definitions' empty flag"):
        # A map entry is at least a name length (8) and an int32 (4).
        n = reader.count("the landmark definitions", 12)
        landmark_definitions = {}
        for k in range(n):
            name = reader.string(f"the name of landmark definition {k}")
            landmark_definitions[name] = reader.int32(f"the vertex of landmark definition {name!r}")
        vertices = np.array(list(landmark_definitions.values()), np.int64)
        _check_indices(reader, vertices, shape.n_vertices, "landmark definitions")

    n_uv = reader.count("the texture coordinates", 16)
    texture_coordinates = reader.array("<f8", 2 * n_uv, "the texture coordinates").reshape(n_uv, 2)

    texture_triangle_indices = None
    if version >= 4:
        texture_triangle_indices = reader.index_triples("the texture triangle indices")
        _check_indices(reader, texture_triangle_indices, n_uv, "the texture triangle indices")
        if not len(texture_triangle_indices):
            texture_triangle_indices = None
    reader.expect_end()

    if n_uv and texture_triangle_indices is None and n_uv != shape.n_vertices:
        raise reader.error(f"{n_uv} texture coordinates for {shape.n_vertices} vertices and no texture triangles")

    return EosModelData(
        mean=shape.mean,
        orthonormal_basis=shape.orthonormal_basis,
        eigenvalues=shape.eigenvalues,
        triangles=shape.triangles,
        texture_coordinates=texture_coordinates if n_uv else None,
        color_model=color if color.n_vertices else None,
        expression_model=expression,
        landmark_definitions=landmark_definitions,
        texture_triangle_indices=texture_triangle_indices,
        version=version,
    )


def read_eos_blendshapes(path) -> tuple[list[str], np.ndarray]:
    """Read an eos blendshapes file (e.g. ``expression_blendshapes_3448.bin``).

    Args:
      path: a cereal binary ``vector<Blendshape>`` archive.

    Returns:
      ``(names, deformations)``: ``B`` names and ``(N, 3, B) float32``
      per-vertex offsets (model units) added to the mean shape.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: naming the file and field, if it is truncated, the
        blendshapes disagree in size, or bytes are left over.

    Examples:
      >>> from morphable.paths import data_dir
      >>> names, d = read_eos_blendshapes(data_dir() / "eos-sfm" / "expression_blendshapes_3448.bin")  # doctest: +SKIP
      >>> names[:2], d.shape  # doctest: +SKIP
      (['anger', 'disgust'], (3448, 3, 6))
    """
    path, buffer = _read_file(path, "eos blendshapes file")
    reader = _ArchiveReader(buffer, path)
    blendshapes = _read_blendshape_list(reader, "the blendshapes")
    reader.expect_end()
    return list(blendshapes.names), blendshapes.deformations


def _int_list(value, path: Path, what: str, minimum: int) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{path}: {what} must be a list of integers, got {value!r}")
    low = [v for v in value if v < minimum]
    if low:
        raise ValueError(f"{path}: {what} contains {low[0]}, expected values >= {minimum}")
    return tuple(value)


def read_ibug_mapping(path) -> LandmarkMapping:
    """Read an eos landmark mapping (TOML, e.g. ``ibug_to_sfm.txt``).

    The file's ``[landmark_mappings]`` table maps 1-based landmark ids (TOML
    keys) to 0-based vertex indices; the optional ``[contour_landmarks]``
    table lists the ids of the right and left jaw contour.

    Args:
      path: the mapping file.

    Returns:
      :class:`LandmarkMapping`; for the SFM file 50 fixed landmarks (iBUG 9,
      18–60, 62–64, 66–68) and contours ``(1..8)`` / ``(10..17)``.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: naming the file, if it is not TOML, lacks
        ``landmark_mappings``, or holds non-integer or negative ids/indices.

    Examples:
      >>> from morphable.paths import data_dir
      >>> m = read_ibug_mapping(data_dir() / "eos-sfm" / "ibug_to_sfm.txt")  # doctest: +SKIP
      >>> m.vertex_for_landmark[31], len(m.vertex_for_landmark)  # doctest: +SKIP
      (114, 50)
    """
    path, buffer = _read_file(path, "landmark mapping file")
    try:
        document = tomllib.loads(buffer.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"{path}: not a TOML landmark mapping: {error}") from None
    table = document.get("landmark_mappings")
    if not isinstance(table, dict):
        raise ValueError(f"{path}: no [landmark_mappings] table")
    vertex_for_landmark = {}
    for key, vertex in table.items():
        if not key.isdigit() or int(key) < 1:
            raise ValueError(f"{path}: landmark id {key!r} is not a positive integer")
        if not isinstance(vertex, int) or isinstance(vertex, bool) or vertex < 0:
            raise ValueError(f"{path}: landmark {key} maps to {vertex!r}, expected a vertex index >= 0")
        vertex_for_landmark[int(key)] = vertex
    contours = document.get("contour_landmarks", {})
    if not isinstance(contours, dict):
        raise ValueError(f"{path}: [contour_landmarks] must be a table")
    return LandmarkMapping(
        vertex_for_landmark=dict(sorted(vertex_for_landmark.items())),
        contour_right=_int_list(contours.get("right", []), path, "contour_landmarks.right", 1),
        contour_left=_int_list(contours.get("left", []), path, "contour_landmarks.left", 1),
    )


def read_model_contours(path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Read an eos model contour file (JSON, e.g. ``sfm_model_contours.json``).

    Args:
      path: a JSON file ``{"model_contour": {"right_contour": [...],
        "left_contour": [...]}}``.

    Returns:
      ``(right, left)`` 0-based candidate vertices of the outer face contour,
      on the subject's right and left (17 each for the SFM).

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: naming the file, if it is not such JSON.

    Examples:
      >>> from morphable.paths import data_dir
      >>> right, left = read_model_contours(data_dir() / "eos-sfm" / "sfm_model_contours.json")  # doctest: +SKIP
      >>> len(right), right[0], left[0]  # doctest: +SKIP
      (17, 380, 795)
    """
    path, buffer = _read_file(path, "model contour file")
    try:
        document = json.loads(buffer.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON model contour file: {error}") from None
    contour = document.get("model_contour") if isinstance(document, dict) else None
    if not isinstance(contour, dict) or "right_contour" not in contour or "left_contour" not in contour:
        raise ValueError(f"{path}: expected model_contour.right_contour and model_contour.left_contour")
    return (
        _int_list(contour["right_contour"], path, "model_contour.right_contour", 0),
        _int_list(contour["left_contour"], path, "model_contour.left_contour", 0),
    )


def eos_to_morphable_model(
    data: EosModelData,
    *,
    blendshapes: tuple[list[str] | tuple[str, ...], np.ndarray] | None = None,
    landmark_indices=(),
    contour_right=(),
    contour_left=(),
    units: str = "unknown",
    name: str = "eos",
) -> MorphableModel:
    """Turn eos model data into a :class:`MorphableModel`.

    Identity uses eos's "rescaled" convention: orthonormal basis with
    ``identity_std = sqrt(eigenvalues)``, so coefficients are in standard
    deviations, as eos's ``draw_sample`` and its fitters expect.

    The expression basis is, in order of preference: the given
    ``blendshapes``; the file's own expression model (a PCA model: its mean is
    added to the shape mean, as eos's ``get_mean`` does, and its std is
    ``sqrt(eigenvalues)``; blendshapes as below); else empty ``(N, 3, 0)``.
    Blendshape coefficients are bounded to ``[0, inf)``: eos fits them with
    non-negative least squares and no upper bound, so capping them at 1 would
    disagree with its fits.

    Args:
      data: from :func:`read_eos_model`.
      blendshapes: ``(names, deformations (N, 3, B))`` from
        :func:`read_eos_blendshapes`, or ``None``.
      landmark_indices, contour_right, contour_left, units, name: as in
        :func:`morphable.model.make_model`.

    Returns:
      The model (float32 leaves).

    Raises:
      ValueError: if ``blendshapes`` is given and the file has its own
        expression model, on negative eigenvalues, or on mismatched sizes.

    Examples:
      >>> import numpy as np
      >>> data = EosModelData(np.zeros((3, 3), np.float32), np.ones((3, 3, 2), np.float32),
      ...                     np.array([4.0, 1.0], np.float32), np.array([[0, 1, 2]], np.int32))
      >>> m = eos_to_morphable_model(data, landmark_indices=[0, -1])
      >>> m.identity_std.tolist(), m.n_expression
      ([2.0, 1.0], 0)
    """
    mean = np.asarray(data.mean, np.float32)
    n = mean.shape[0]
    expression_model = data.expression_model
    if blendshapes is not None:
        if expression_model is not None:
            raise ValueError("blendshapes given, but the eos model file already contains an expression model")
        names, deformations = blendshapes
        expression_model = EosBlendshapes(tuple(names), np.asarray(deformations, np.float32))

    def std_of(eigenvalues: np.ndarray, what: str) -> np.ndarray:
        if np.any(eigenvalues < 0):
            raise ValueError(f"{what}: negative eigenvalue {float(eigenvalues.min())}")
        return np.sqrt(eigenvalues)

    expression_kwargs: dict = {}
    if expression_model is None:
        expression_basis = np.zeros((n, 3, 0), np.float32)
    elif isinstance(expression_model, EosPcaModel):
        mean = mean + expression_model.mean
        expression_basis = expression_model.orthonormal_basis
        expression_kwargs = dict(
            expression_std=std_of(expression_model.eigenvalues, "expression eigenvalues"),
            expression_kind="pca",
        )
    else:
        b = expression_model.deformations.shape[-1]
        expression_basis = expression_model.deformations
        expression_kwargs = dict(
            expression_lower=np.zeros(b, np.float32),
            expression_upper=np.full(b, np.inf, np.float32),
            expression_names=expression_model.names,
            expression_kind="blendshape",
        )
    return make_model(
        mean,
        data.orthonormal_basis,
        expression_basis,
        identity_std=std_of(np.asarray(data.eigenvalues), "identity eigenvalues"),
        triangles=data.triangles,
        landmark_indices=landmark_indices,
        contour_right=contour_right,
        contour_left=contour_left,
        units=units,
        name=name,
        **expression_kwargs,
    )


def load_sfm(directory=None, *, blendshapes: bool = True) -> MorphableModel:
    """Load the Surrey Face Model (SFM 3448) with eos's expression blendshapes.

    Reads ``sfm_shape_3448.bin``, ``expression_blendshapes_3448.bin``,
    ``ibug_to_sfm.txt`` and ``sfm_model_contours.json`` from ``directory``.

    Args:
      directory: the folder of those files; default
        ``morphable.paths.data_dir() / "eos-sfm"``.
      blendshapes: include the 6 expression blendshapes (anger, disgust,
        fear, happiness, sadness, surprise; kind ``"blendshape"``, bounds
        ``[0, inf)`` as eos's NNLS fit); if False the expression basis is
        empty ``(3448, 3, 0)``.

    Returns:
      A :class:`MorphableModel` named ``"sfm_3448"``: 3448 vertices, 6736
      triangles, 63 identity components with ``identity_std =
      sqrt(eigenvalues)``, 68 iBUG landmark slots (50 fixed, ``-1`` for the
      jaw contour 1–8/10–17 and the inner mouth corners 61/65), 17 + 17
      contour candidate vertices, units ``"mm"`` (approximately, per the data
      README). Licence: non-commercial use only.

    Raises:
      FileNotFoundError: if a file is missing.
      ValueError: naming the file, if one is malformed or references a vertex
        outside the model.

    Examples:
      >>> m = load_sfm()  # doctest: +SKIP
      >>> m.n_vertices, m.n_identity, m.n_expression  # doctest: +SKIP
      (3448, 63, 6)
    """
    directory = Path(directory) if directory is not None else data_dir() / "eos-sfm"
    data = read_eos_model(directory / _SFM_MODEL_FILE)
    if data.expression_model is not None:
        raise ValueError(
            f"{directory / _SFM_MODEL_FILE}: contains its own expression model; the SFM shape file has none "
            "(use read_eos_model and eos_to_morphable_model for such files)"
        )
    n = data.n_vertices
    mapping_path = directory / _SFM_MAPPING_FILE
    mapping = read_ibug_mapping(mapping_path)
    try:
        landmark_indices = mapping.landmark_indices(N_IBUG_LANDMARKS)
    except ValueError as error:
        raise ValueError(f"{mapping_path}: {error}") from None
    contours_path = directory / _SFM_CONTOURS_FILE
    contour_right, contour_left = read_model_contours(contours_path)
    for path, what, indices in (
        (mapping_path, "landmark_mappings", landmark_indices),
        (contours_path, "model_contour", contour_right + contour_left),
    ):
        outside = [v for v in indices if v >= n]
        if outside:
            raise ValueError(f"{path}: {what} references vertex {outside[0]}, the model has {n} vertices")
    blendshape_data = None
    if blendshapes:
        blendshapes_path = directory / _SFM_BLENDSHAPES_FILE
        names, deformations = read_eos_blendshapes(blendshapes_path)
        if deformations.shape[0] != n:
            raise ValueError(f"{blendshapes_path}: blendshapes have {deformations.shape[0]} vertices, the model {n}")
        blendshape_data = (names, deformations)
    return eos_to_morphable_model(
        data,
        blendshapes=blendshape_data,
        landmark_indices=landmark_indices,
        contour_right=contour_right,
        contour_left=contour_left,
        units="mm",
        name="sfm_3448",
    )
