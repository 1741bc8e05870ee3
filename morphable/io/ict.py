"""ICT-FaceKit light model (MIT): the library's default open model.

The model is read from the repository's ``FaceXModel/`` OBJ meshes at the
pinned commit: ``generic_neutral_mesh.obj`` (26,719 vertices, mostly quads),
100 identity modes ``identityNNN.obj`` and the 53 ARKit-named expression
blendshapes listed in ``vertex_indices.json``. Modes are ``mesh − neutral``;
identity weights are N(0, 1) (the toolkit's convention), expression weights in
[0, 1]. Units are centimetres.

Sources, in order: an explicit ``source`` (a checkout folder, ``.zip``,
``.tar.xz``/``.tar.gz``), the archive in ``$DEEPEXP3D_DATA/ict-facekit/``, or
a download of the GitHub archive at the pinned commit. Every file used is
verified against the SHA-256 list shipped with the library
(``ict_facekit_sha256.json``), then the model is converted once to the native
``.npz`` cache; later loads read only the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import zipfile
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from morphable.editing import restrict
from morphable.io.download import download_file
from morphable.io.native import load_model, save_model
from morphable.model import MorphableModel, make_model
from morphable.paths import cache_dir as default_cache_dir
from morphable.paths import data_dir

__all__ = ["load_ict", "convert_ict", "ICT_COMMIT", "ICT_URL", "ICT_REGIONS", "ict_cache_path", "read_obj"]

ICT_COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"
ICT_URL = f"https://github.com/ICT-VGL/ICT-FaceKit/archive/{ICT_COMMIT}.zip"

# Vertex ranges of the model's parts, from the ICT-FaceKit README ("Face Model
# Topology" and "Face Area Details").
ICT_REGIONS = {
    "full": (0, 26719),
    "face": (0, 9409),
    "narrow_face": (0, 6706),
    "face_and_head": (0, 11248),
}

# Jawline candidates from the ICT-FaceKit README ("Right/Left extended jawline",
# supersets of the vertices that substitute Multi-PIE points 0–7 and 9–16);
# they are not in vertex_indices.json.
_RIGHT_EXTENDED_JAWLINE = (
    1280, 1278, 1275, 1272, 1248, 12, 820, 1834, 1902, 243, 844, 781, 1673, 2199, 801, 1447, 800,
)
_LEFT_EXTENDED_JAWLINE = (
    3041, 3661, 3042, 4390, 3880, 3022, 3085, 2484, 4102, 4036, 3061, 2253, 3466, 3490, 3493, 3496, 3498,
)


def ict_cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the converted full-head ICT model in the cache."""
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / f"ict-facekit-{ICT_COMMIT[:7]}.npz"


def load_ict(
    source: str | os.PathLike | None = None,
    *,
    region: str = "full",
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    url: str = ICT_URL,
    opener: Callable | None = None,
) -> MorphableModel:
    """Load the ICT-FaceKit light model (converting and caching it on first use).

    Args:
      source: ICT-FaceKit checkout folder or archive (``.zip``, ``.tar.xz``,
        ``.tar.gz``). Default: the cache, else ``$DEEPEXP3D_DATA/ict-facekit``,
        else a download.
      region: ``"full"`` (26,719 vertices), ``"face_and_head"``, ``"face"``
        (0–9408) or ``"narrow_face"`` (0–6705); landmarks stay valid in all.
      cache_dir: cache folder (default ``$DEEPEXP3D_CACHE`` or ``~/.cache/deepexp3d``).
      download: allow downloading from ``url`` when no local copy is found.
      url, opener: where and how to download (injectable for tests).

    Returns:
      The model: 100 identity components (std 1), 53 blendshape expression
      components with bounds [0, 1] and ARKit names, 68 landmarks, jawline
      candidates, units ``"cm"``.

    Raises:
      FileNotFoundError: no source found and downloading is disabled.
      ValueError: a file fails its SHA-256 check or cannot be parsed (named).
    """
    if region not in ICT_REGIONS:
        raise ValueError(f"region: expected one of {sorted(ICT_REGIONS)}, got {region!r}")
    cached = ict_cache_path(cache_dir)
    model = None
    if source is None and cached.is_file():
        try:
            model = load_model(cached)
        except ValueError:
            cached.unlink(missing_ok=True)  # a stale or damaged cache is rebuilt
    if model is None:
        if source is None:
            source = _find_local_archive()
        if source is None:
            if not download:
                raise FileNotFoundError(
                    "ICT-FaceKit not found: pass source=, put the archive in "
                    f"{data_dir() / 'ict-facekit'} (DEEPEXP3D_DATA), or allow download"
                )
            source = _download_archive(url, cached.parent, opener)
        model = convert_ict(source)
        save_model(model, cached)
    if region != "full":
        start, stop = ICT_REGIONS[region]
        model = restrict(model, np.arange(start, stop), name=f"ict-facekit-{region}")
    return model


def _find_local_archive() -> Path | None:
    folder = data_dir() / "ict-facekit"
    if folder.is_dir():
        for pattern in ("*.tar.xz", "*.tar.gz", "*.zip"):
            found = sorted(folder.glob(pattern))
            if found:
                return found[0]
    return None


def _download_archive(url: str, folder: Path, opener: Callable | None) -> Path:
    destination = folder / "downloads" / f"ICT-FaceKit-{ICT_COMMIT}.zip"
    if destination.is_file():
        return destination
    kwargs = {} if opener is None else {"opener": opener}
    # GitHub archives are not byte-stable, so the archive itself is not pinned;
    # each file in it is verified against the shipped SHA-256 list instead.
    return download_file(url, destination, **kwargs)


def _expected_hashes() -> dict[str, str]:
    text = resources.files("morphable.io").joinpath("ict_facekit_sha256.json").read_text()
    return json.loads(text)["sha256"]


class _ArchiveReader:
    """Read ``FaceXModel/...`` members from a folder, zip or tar, whatever the top folder."""

    def __init__(self, source: Path):
        self.source = source
        if source.is_dir():
            root = source if (source / "FaceXModel").is_dir() else next(
                (p for p in source.iterdir() if (p / "FaceXModel").is_dir()), None
            )
            if root is None:
                raise ValueError(f"{source}: no FaceXModel/ folder found")
            self._read = lambda name: (root / name).read_bytes()
        elif zipfile.is_zipfile(source):
            archive = zipfile.ZipFile(source)
            members = {self._strip(n): n for n in archive.namelist()}
            self._read = lambda name: archive.read(members[name])
            self._names = set(members)
        elif tarfile.is_tarfile(source):
            # Read the whole tar once (one pass over the compressed stream): the
            # model needs 155 of its members and random access into .xz is slow.
            self._members = {}
            with tarfile.open(source) as archive:
                for member in archive:
                    if member.isfile():
                        name = self._strip(member.name)
                        if name.startswith("FaceXModel/"):
                            self._members[name] = archive.extractfile(member).read()
            self._read = lambda name: self._members[name]
        elif not source.exists():
            raise FileNotFoundError(f"ICT-FaceKit source not found: {source}")
        else:
            raise ValueError(f"{source}: not an ICT-FaceKit folder, zip or tar archive")

    @staticmethod
    def _strip(name: str) -> str:
        parts = name.split("/")
        if "FaceXModel" in parts:
            return "/".join(parts[parts.index("FaceXModel"):])
        return name

    def read(self, name: str) -> bytes:
        try:
            return self._read(name)
        except (KeyError, FileNotFoundError) as error:
            raise ValueError(f"{self.source}: missing {name}") from error


def read_obj(data: bytes, *, with_faces: bool = False):
    """Parse vertices (and polygon faces, triangulated) from OBJ text.

    Args:
      data: the OBJ file's bytes.
      with_faces: also return faces; quads ``a b c d`` become ``(a b c), (a c d)``.

    Returns:
      ``vertices (V, 3) float32`` or ``(vertices, triangles (T, 3) int32, 0-based)``.

    Examples:
      >>> v, t = read_obj(b"v 0 0 0\\nv 1 0 0\\nv 1 1 0\\nv 0 1 0\\nf 1/1 2/2 3/3 4/4\\n", with_faces=True)
      >>> v.shape, t.tolist()
      ((4, 3), [[0, 1, 2], [0, 2, 3]])
    """
    lines = data.split(b"\n")
    vertex_lines = [line[2:] for line in lines if line.startswith(b"v ")]
    try:
        vertices = np.array(b" ".join(vertex_lines).split(), dtype=np.float32).reshape(-1, 3)
    except ValueError as error:
        raise ValueError(f"malformed OBJ vertex data ({error})") from error
    if not with_faces:
        return vertices
    triangles = []
    for line in lines:
        if line.startswith(b"f "):
            corners = [int(token.split(b"/")[0]) - 1 for token in line.split()[1:]]
            for k in range(1, len(corners) - 1):
                triangles.append((corners[0], corners[k], corners[k + 1]))
    return vertices, np.asarray(triangles, dtype=np.int32).reshape(-1, 3)


def convert_ict(source: str | os.PathLike) -> MorphableModel:
    """Build the model from an ICT-FaceKit folder/archive, verifying every file's SHA-256.

    Raises:
      ValueError: a file is missing, differs from the pinned commit, or is malformed.
    """
    source = Path(source)
    reader = _ArchiveReader(source)
    expected = _expected_hashes()

    def verified(name: str) -> bytes:
        data = reader.read(name)
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected[name]:
            raise ValueError(
                f"{source}: {name} has SHA-256 {digest[:16]}…, expected {expected[name][:16]}… "
                f"(not ICT-FaceKit at commit {ICT_COMMIT[:7]})"
            )
        return data

    indices = json.loads(verified("FaceXModel/vertex_indices.json"))
    neutral, triangles = read_obj(verified("FaceXModel/generic_neutral_mesh.obj"), with_faces=True)

    def modes(names):
        out = np.empty((neutral.shape[0], 3, len(names)), np.float32)
        for k, name in enumerate(names):
            mesh = read_obj(verified(f"FaceXModel/{name}.obj"))
            if mesh.shape != neutral.shape:
                raise ValueError(f"{source}: {name}.obj has {mesh.shape[0]} vertices, expected {neutral.shape[0]}")
            out[:, :, k] = mesh - neutral
        return out

    identity = modes([f"identity{k:03d}" for k in range(100)])
    expression_names = list(indices["expressions"])
    expression = modes(expression_names)
    return make_model(
        neutral,
        identity,
        expression,
        triangles=triangles,
        landmark_indices=indices["idx_to_landmark_verts"],
        contour_right=_RIGHT_EXTENDED_JAWLINE,
        contour_left=_LEFT_EXTENDED_JAWLINE,
        expression_names=expression_names,
        expression_kind="blendshape",
        units="cm",
        name="ict-facekit",
    )

