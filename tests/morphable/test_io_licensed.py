"""Loaders for licensed models (BFM 2009/2017, FLAME, LSFM) on small files in the real layouts.

The real files cannot be shipped, so each test writes a tiny model the way the
release does (same keys, shapes, dtypes, index base, units, and for FLAME a
Python-2-style pickle referencing chumpy) and checks the loaded values exactly
against what was written.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pickle
import pickletools
import re
import shlex
import struct
import sys
import types

import numpy as np
import pytest
import scipy.io
import scipy.sparse

from morphable.io.bfm import load_bfm2009, load_bfm2017
from morphable.io.flame import load_flame
from morphable.io.lsfm import load_lsfm
from morphable.model import landmark_mask, shape

_NO_H5PY = importlib.util.find_spec("h5py") is None
needs_h5py = pytest.mark.skipif(_NO_H5PY, reason="h5py (the 'h5' extra) is not installed")

N_VERTICES = 6
TRIANGLES = np.array([[0, 1, 2], [1, 3, 2], [2, 3, 4], [3, 5, 4]])


def _orthonormal_columns(rows: int, columns: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(rows, columns)))
    return q


def _offset(model, identity=None, expression=None) -> np.ndarray:
    """``shape(model, identity, expression) − mean`` as a NumPy ``(N, 3)`` array."""
    identity = np.zeros(model.n_identity) if identity is None else identity
    expression = np.zeros(model.n_expression) if expression is None else expression
    return np.asarray(shape(model, identity, expression)) - np.asarray(model.mean)


def _unit(k: int, size: int) -> np.ndarray:
    e = np.zeros(size)
    e[k] = 1.0
    return e


# ----------------------------------------------------------------------------
# BFM 2009 (.mat, micrometres, 1-based triangles, shapeEV = std)
# ----------------------------------------------------------------------------


def _write_bfm2009(path, *, drop=()):
    k = 4
    content = {
        "shapeMU": np.random.default_rng(1).normal(0.0, 50_000.0, (3 * N_VERTICES, 1)).astype(np.float32),
        "shapePC": _orthonormal_columns(3 * N_VERTICES, k, seed=2).astype(np.float32),
        "shapeEV": np.array([[40_000.0], [20_000.0], [9_000.0], [3_000.0]], dtype=np.float32),
        "tl": (TRIANGLES + 1).astype(np.float64),  # MATLAB doubles, 1-based
        # The texture model is present in the release; the loader must not need it.
        "texMU": np.full((3 * N_VERTICES, 1), 128.0, dtype=np.float32),
        "texPC": _orthonormal_columns(3 * N_VERTICES, k, seed=3).astype(np.float32),
        "texEV": np.ones((k, 1), dtype=np.float32),
    }
    for key in drop:
        del content[key]
    scipy.io.savemat(path, content)
    return content


def test_bfm2009_values_units_and_triangles(tmp_path):
    path = tmp_path / "01_MorphableModel.mat"
    written = _write_bfm2009(path)
    model = load_bfm2009(path)

    assert (model.n_vertices, model.n_identity, model.n_expression) == (N_VERTICES, 4, 0)
    assert model.units == "mm"
    # micrometres → millimetres
    np.testing.assert_allclose(model.mean, written["shapeMU"].reshape(-1, 3) / 1000.0, rtol=1e-6)
    np.testing.assert_allclose(model.identity_std, written["shapeEV"].ravel() / 1000.0, rtol=1e-5)
    for k in range(4):
        expected = (written["shapePC"][:, k] * written["shapeEV"][k, 0] / 1000.0).reshape(-1, 3)
        np.testing.assert_allclose(_offset(model, identity=_unit(k, 4)), expected, atol=1e-4)
        np.testing.assert_allclose(model.identity_basis[:, :, k], written["shapePC"][:, k].reshape(-1, 3), atol=1e-6)
    # 0-based, last two corners swapped to OpenGL winding (as eos and menpo/lsfm do).
    np.testing.assert_array_equal(model.triangles, TRIANGLES[:, [0, 2, 1]])
    assert model.landmark_indices == (-1,) * 68
    assert not landmark_mask(model).any()


def test_bfm2009_truncation_and_landmarks(tmp_path):
    path = tmp_path / "01_MorphableModel.mat"
    written = _write_bfm2009(path)
    model = load_bfm2009(path, n_identity=2, landmark_indices=[0, 5, -1])
    assert model.n_identity == 2
    np.testing.assert_allclose(model.identity_std, written["shapeEV"].ravel()[:2] / 1000.0, rtol=1e-5)
    assert model.landmark_indices == (0, 5, -1)


# ----------------------------------------------------------------------------
# BFM 2017/2019 (statismo .h5, millimetres)
# ----------------------------------------------------------------------------


def _write_bfm2017(path, *, version=(0, 9), with_expression=True, drop=()):
    import h5py

    n3 = 3 * N_VERTICES
    rng = np.random.default_rng(4)
    shape_mean = rng.normal(0.0, 60.0, n3).astype(np.float32)
    shape_u = _orthonormal_columns(n3, 3, seed=5).astype(np.float32)
    shape_var = np.array([900.0, 400.0, 25.0], dtype=np.float32)
    expression_mean = rng.normal(0.0, 2.0, n3).astype(np.float32)
    expression_u = _orthonormal_columns(n3, 2, seed=6).astype(np.float32)
    expression_var = np.array([16.0, 4.0], dtype=np.float32)
    scaled = version == (0, 8)  # the old statismo format stores U·sqrt(variance)

    def write_model(group, mean, u, variance, representer_name):
        basis = u * np.sqrt(variance) if scaled else u
        datasets = {
            f"{group}/model/mean": mean,
            f"{group}/model/pcaBasis": basis.astype(np.float32),
            f"{group}/model/pcaVariance": variance,
            f"{group}/model/noiseVariance": np.zeros(1, np.float32),
            # The reference mesh differs from the mean; the loader must use model/mean.
            f"{group}/representer/points": (mean.reshape(-1, 3).T + 1.5).astype(np.float32),
            f"{group}/representer/cells": TRIANGLES.T.astype(np.int32),
        }
        for name, data in datasets.items():
            if name not in drop:
                handle[name] = data
        handle[f"{group}/representer"].attrs["name"] = representer_name
        handle[f"{group}/representer"].attrs["datasetType"] = "POLYGON_MESH"

    with h5py.File(path, "w") as handle:
        if version is not None:
            handle["version/majorVersion"] = np.int32(version[0])
            handle["version/minorVersion"] = np.int32(version[1])
        write_model("shape", shape_mean, shape_u, shape_var, "gravis::MeshShapeRepresenter")
        write_model("color", np.full(n3, 0.5, np.float32), shape_u, shape_var, "gravis::MeshColorRepresenter")
        if with_expression:
            write_model(
                "expression", expression_mean, expression_u, expression_var, "gravis::MeshExpressionRepresenter"
            )
        handle["metadata/landmarks/json"] = '[{"id": "center.nose.tip", "coordinates": [0, 0, 0]}]'
    return dict(
        shape_mean=shape_mean,
        shape_u=shape_u,
        shape_var=shape_var,
        expression_mean=expression_mean,
        expression_u=expression_u,
        expression_var=expression_var,
    )


@needs_h5py
@pytest.mark.parametrize("version", [(0, 9), (1, 0), (0, 8), None], ids=["v0.9", "v1.0", "v0.8-scaled", "no-version"])
def test_bfm2017_values_for_every_statismo_version(tmp_path, version):
    path = tmp_path / "model2017-1_bfm_nomouth.h5"
    written = _write_bfm2017(path, version=version)
    model = load_bfm2017(path)

    assert (model.n_vertices, model.n_identity, model.n_expression) == (N_VERTICES, 3, 2)
    assert model.units == "mm"
    assert model.expression_kind == "pca"
    np.testing.assert_allclose(
        model.mean, (written["shape_mean"] + written["expression_mean"]).reshape(-1, 3), rtol=1e-6, atol=1e-5
    )
    np.testing.assert_allclose(model.identity_std, np.sqrt(written["shape_var"]), rtol=1e-5)
    np.testing.assert_allclose(model.expression_std, np.sqrt(written["expression_var"]), rtol=1e-5)
    for k in range(3):
        expected = (written["shape_u"][:, k] * np.sqrt(written["shape_var"][k])).reshape(-1, 3)
        np.testing.assert_allclose(_offset(model, identity=_unit(k, 3)), expected, atol=1e-4)
    for k in range(2):
        expected = (written["expression_u"][:, k] * np.sqrt(written["expression_var"][k])).reshape(-1, 3)
        np.testing.assert_allclose(_offset(model, expression=_unit(k, 2)), expected, atol=1e-4)
    np.testing.assert_array_equal(model.triangles, TRIANGLES)  # cells (3, T) 0-based
    assert model.landmark_indices == (-1,) * 68


@needs_h5py
def test_bfm2017_options_and_models_without_expressions(tmp_path):
    path = tmp_path / "model2017-1_face12_nomouth.h5"
    written = _write_bfm2017(path)
    model = load_bfm2017(path, n_identity=1, n_expression=1, include_expression_mean=False, landmark_indices=[2])
    assert (model.n_identity, model.n_expression) == (1, 1)
    np.testing.assert_allclose(model.mean, written["shape_mean"].reshape(-1, 3), rtol=1e-6)
    assert model.landmark_indices == (2,)

    # The BFM 2009 .h5 re-release has no /expression group.
    no_expression = tmp_path / "model2009-publicmm1-bfm.h5"
    written = _write_bfm2017(no_expression, with_expression=False)
    model = load_bfm2017(no_expression)
    assert model.n_expression == 0
    np.testing.assert_allclose(model.mean, written["shape_mean"].reshape(-1, 3), rtol=1e-6)
    with pytest.raises(ValueError, match="n_expression"):
        load_bfm2017(no_expression, n_expression=1)


@needs_h5py
def test_bfm2017_rejects_unknown_or_inconsistent_versions(tmp_path):
    unsupported = tmp_path / "future.h5"
    _write_bfm2017(unsupported, version=(2, 0))
    with pytest.raises(ValueError, match=r"format 2\.0"):
        load_bfm2017(unsupported)

    ambiguous = tmp_path / "ambiguous.h5"
    _write_bfm2017(ambiguous, version=None)
    import h5py

    with h5py.File(ambiguous, "r+") as handle:
        handle["shape/model/pcaBasis"][...] *= 3.0  # neither unit-norm nor sqrt(variance)-scaled
    with pytest.raises(ValueError, match="neither unit-norm"):
        load_bfm2017(ambiguous)


def test_bfm2017_without_h5py_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "model2017-1_bfm_nomouth.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")  # h5py is needed before the content matters
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` raise ImportError
    with pytest.raises(ImportError, match=re.escape("pip install 'deepexp3d[h5]'")):
        load_bfm2017(path)


# ----------------------------------------------------------------------------
# LSFM (.mat, menpo layout, eigenvalues = variances, 0-based triangles)
# ----------------------------------------------------------------------------


def _write_lsfm(path, *, drop=()):
    n3 = 3 * N_VERTICES
    variance = np.array([100.0, 36.0, 4.0])
    content = {
        "mean": np.random.default_rng(7).normal(0.0, 40.0, n3),  # (3N,), savemat stores (1, 3N)
        "components": _orthonormal_columns(n3, 3, seed=8),
        "eigenvalues": variance,
        "cumulative_explained_variance": np.cumsum(variance) / variance.sum() * 0.998,
        "trilist": TRIANGLES.astype(np.int64),
        "n_training_samples": 8402,
    }
    for key in drop:
        del content[key]
    scipy.io.savemat(path, content)
    return content


def test_lsfm_values(tmp_path):
    path = tmp_path / "all_all_all.mat"
    written = _write_lsfm(path)
    model = load_lsfm(path)

    assert (model.n_vertices, model.n_identity, model.n_expression) == (N_VERTICES, 3, 0)
    assert model.units == "unknown"  # MODELS.md documents no length unit
    np.testing.assert_allclose(model.mean, written["mean"].reshape(-1, 3), rtol=1e-6)
    np.testing.assert_allclose(model.identity_std, np.sqrt(written["eigenvalues"]), rtol=1e-6)
    for k in range(3):
        expected = (written["components"][:, k] * np.sqrt(written["eigenvalues"][k])).reshape(-1, 3)
        np.testing.assert_allclose(_offset(model, identity=_unit(k, 3)), expected, atol=1e-4)
    np.testing.assert_array_equal(model.triangles, TRIANGLES)
    assert model.landmark_indices == (-1,) * 68
    assert load_lsfm(path, n_identity=2, landmark_indices=[4]).n_identity == 2


# ----------------------------------------------------------------------------
# FLAME (Python 2 pickle with chumpy objects, metres, 300 shape + rest expression)
# ----------------------------------------------------------------------------


@contextlib.contextmanager
def _fake_chumpy():
    """Provide ``chumpy.ch.Ch`` only while pickling, so loading proves chumpy is not needed."""
    chumpy = types.ModuleType("chumpy")
    chumpy_ch = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            # What chumpy's __getstate__ keeps for a plain Ch (its caches are dropped).
            self.x = np.asarray(x, dtype=np.float64)
            self._dirty_vars = set()
            self._itr = None
            self._depends_on_deps = {}
            self._make_dense = False
            self._make_sparse = False

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    chumpy_ch.Ch = Ch
    chumpy.ch = chumpy_ch
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = chumpy, chumpy_ch
    try:
        yield Ch
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


class _Python2StylePickler(pickle._Pickler):
    """Writes protocol 2 as Python 2's pickle did: byte strings as (SHORT_)BINSTRING
    (so they load as latin1 text) and the old module names of NumPy and SciPy."""

    dispatch = pickle._Pickler.dispatch.copy()
    python2_names = {}

    def _save_byte_string(self, obj):
        raw = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_byte_string
    dispatch[str] = _save_byte_string

    def save_global(self, obj, name=None):
        renamed = self.python2_names.get(obj)
        if renamed is None:
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + f"{renamed[0]}\n{renamed[1]}\n".encode("ascii"))
        self.memoize(obj)


_Python2StylePickler.python2_names = {
    np.ndarray.__reduce__(np.zeros(1))[0]: ("numpy.core.multiarray", "_reconstruct"),
    scipy.sparse.csc_matrix: ("scipy.sparse.csc", "csc_matrix"),
}


def _write_flame(path, *, n_expression=4, drop=(), top_level=None):
    rng = np.random.default_rng(9)
    n_components = 300 + n_expression
    template = rng.normal(0.0, 0.08, (N_VERTICES, 3))  # metres
    # FLAME scales each column by its std: decreasing norms.
    directions = rng.normal(size=(N_VERTICES, 3, n_components)) * (1e-3 / np.arange(1, n_components + 1))
    with _fake_chumpy() as Ch:
        content = {
            "v_template": template,
            "shapedirs": Ch(directions),
            "posedirs": Ch(rng.normal(size=(N_VERTICES, 3, 36)) * 1e-3),
            "f": TRIANGLES.astype(np.uint32),
            "J_regressor": scipy.sparse.csc_matrix(np.full((5, N_VERTICES), 1.0 / N_VERTICES)),
            "J": rng.normal(size=(5, 3)),
            "weights": np.full((N_VERTICES, 5), 0.2),
            "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
            "bs_style": "lbs",
            "bs_type": "lrotmin",
        }
        for key in drop:
            del content[key]
        with open(path, "wb") as handle:
            _Python2StylePickler(handle, protocol=2).dump(content if top_level is None else top_level)
    return dict(template=template, directions=directions)


def test_flame_pickle_written_like_python2_needs_chumpy_for_plain_pickle(tmp_path):
    path = tmp_path / "generic_model.pkl"
    _write_flame(path)
    data = path.read_bytes()
    opcodes = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    globals_ = {arg for name, arg in opcodes if name == "GLOBAL"}
    assert {"chumpy.ch Ch", "numpy.core.multiarray _reconstruct"} <= globals_
    assert {"scipy.sparse.csc csc_matrix", "__builtin__ set"} <= globals_
    assert any(name in ("BINSTRING", "SHORT_BINSTRING") for name, _ in opcodes)
    assert not any(name in ("BINUNICODE", "BINBYTES", "SHORT_BINBYTES") for name, _ in opcodes)
    if importlib.util.find_spec("chumpy") is None:
        with pytest.raises(ModuleNotFoundError, match="chumpy"):
            pickle.loads(data, encoding="latin1")


def test_flame_values_units_and_split(tmp_path):
    path = tmp_path / "generic_model.pkl"
    written = _write_flame(path, n_expression=4)
    model = load_flame(path)

    assert "chumpy" not in sys.modules and "chumpy.ch" not in sys.modules
    assert (model.n_vertices, model.n_identity, model.n_expression) == (N_VERTICES, 300, 4)
    assert model.units == "m"
    directions = written["directions"]
    np.testing.assert_allclose(model.mean, written["template"], rtol=1e-6)
    # A FLAME column is u·σ: the loader's std is its norm, its basis column unit-norm.
    flat = directions.reshape(3 * N_VERTICES, -1)
    np.testing.assert_allclose(model.identity_std, np.linalg.norm(flat[:, :300], axis=0), rtol=1e-5)
    np.testing.assert_allclose(model.expression_std, np.linalg.norm(flat[:, 300:], axis=0), rtol=1e-5)
    np.testing.assert_allclose(
        np.linalg.norm(np.asarray(model.identity_basis).reshape(3 * N_VERTICES, -1), axis=0), 1.0, rtol=1e-5
    )
    for k in (0, 1, 299):
        np.testing.assert_allclose(_offset(model, identity=_unit(k, 300)), directions[:, :, k], atol=1e-7)
    for k in range(4):
        np.testing.assert_allclose(_offset(model, expression=_unit(k, 4)), directions[:, :, 300 + k], atol=1e-7)
    np.testing.assert_array_equal(model.triangles, TRIANGLES)
    assert model.landmark_indices == (-1,) * 68

    small = load_flame(path, n_shape=3, n_expression=2, landmark_indices=[1, -1])
    assert (small.n_identity, small.n_expression) == (3, 2)
    np.testing.assert_allclose(_offset(small, expression=_unit(1, 2)), directions[:, :, 301], atol=1e-7)
    assert small.landmark_indices == (1, -1)


class _RunsOnLoad:
    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _touch_command(marker) -> str:
    return f"touch {shlex.quote(str(marker))}"


@pytest.mark.parametrize("kind", ["os.system-py2", "os.system-py3", "builtins.eval"])
def test_flame_malicious_pickle_is_refused_without_running(tmp_path, kind):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "generic_model.pkl"
    if kind == "os.system-py2":
        # Protocol 0, as a Python 2 attacker would write it.
        payload = f"cos\nsystem\n(S'{_touch_command(marker)}'\ntR.".encode()
        expected = "os.system"
    elif kind == "os.system-py3":
        payload = pickle.dumps({"v_template": _RunsOnLoad(os.system, _touch_command(marker))}, protocol=2)
        expected = "system"
    else:
        code = f"open({str(marker)!r}, 'w').close()"
        payload = pickle.dumps({"shapedirs": _RunsOnLoad(eval, code)}, protocol=4)
        expected = "builtins.eval"
    path.write_bytes(payload)

    with pytest.raises(pickle.UnpicklingError, match=re.escape(expected)) as raised:
        load_flame(path)
    assert path.name in str(raised.value)
    assert not marker.exists()

    if os.name == "posix" or kind == "builtins.eval":
        # Control: the payload is live under a plain unpickler, so the check above can fail.
        pickle.loads(payload)
        assert marker.exists()


def test_flame_rejects_non_dict_and_unevaluable_chumpy(tmp_path):
    not_dict = tmp_path / "list.pkl"
    _write_flame(not_dict, top_level=[1, 2, 3])
    with pytest.raises(ValueError, match="expected a pickled dict"):
        load_flame(not_dict)

    expression = tmp_path / "expression.pkl"
    with _fake_chumpy():
        ops = types.ModuleType("chumpy.ch_ops")

        class add:  # a chumpy expression node: no stored array
            def __init__(self):
                self.a, self.b = 1.0, 2.0

        add.__module__, add.__qualname__ = "chumpy.ch_ops", "add"
        ops.add = add
        sys.modules["chumpy.ch_ops"] = ops
        try:
            content = {"v_template": np.zeros((3, 3)), "shapedirs": add(), "f": np.array([[0, 1, 2]])}
            expression.write_bytes(pickle.dumps(content, protocol=2))
        finally:
            del sys.modules["chumpy.ch_ops"]
    with pytest.raises(ValueError, match=r"chumpy\.ch_ops\.add"):
        load_flame(expression)


# ----------------------------------------------------------------------------
# Bad input, every loader
# ----------------------------------------------------------------------------

_LOADERS = {
    "bfm2009": (load_bfm2009, "01_MorphableModel.mat", _write_bfm2009, "shapeEV", "n_identity"),
    "bfm2017": (load_bfm2017, "model2017-1_bfm_nomouth.h5", _write_bfm2017, "shape/model/pcaBasis", "n_identity"),
    "lsfm": (load_lsfm, "all_all_all.mat", _write_lsfm, "trilist", "n_identity"),
    "flame": (load_flame, "generic_model.pkl", _write_flame, "shapedirs", "n_shape"),
}
_LOADER_NAMES = [pytest.param(name, marks=needs_h5py) if name == "bfm2017" else name for name in sorted(_LOADERS)]


@pytest.mark.parametrize("name", _LOADER_NAMES)
def test_missing_file_names_the_path(tmp_path, name):
    load, filename, *_ = _LOADERS[name]
    path = tmp_path / "absent" / filename
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load(path)


@pytest.mark.parametrize("name", _LOADER_NAMES)
def test_text_file_is_a_value_error_naming_the_file(tmp_path, name):
    load, filename, *_ = _LOADERS[name]
    path = tmp_path / filename
    path.write_text("this is not a model file\n" * 20)
    with pytest.raises(ValueError, match=re.escape(path.name)):
        load(path)


@pytest.mark.parametrize("name", _LOADER_NAMES)
def test_missing_key_names_file_and_key(tmp_path, name):
    load, filename, write, key, _ = _LOADERS[name]
    path = tmp_path / filename
    write(path, drop=(key,))
    with pytest.raises(ValueError, match=re.escape(key)) as raised:
        load(path)
    assert path.name in str(raised.value)


@pytest.mark.parametrize("name", _LOADER_NAMES)
def test_out_of_range_landmark_and_component_count(tmp_path, name):
    load, filename, write, _, count_argument = _LOADERS[name]
    path = tmp_path / filename
    write(path)
    with pytest.raises(ValueError, match="landmark_indices"):
        load(path, landmark_indices=[0, N_VERTICES])
    with pytest.raises(ValueError, match="landmark_indices"):
        load(path, landmark_indices=[-2])
    with pytest.raises(ValueError, match=count_argument):
        load(path, **{count_argument: 1000})
    with pytest.raises(ValueError, match=count_argument):
        load(path, **{count_argument: -1})


def test_out_of_range_triangle_names_file_and_key(tmp_path):
    path = tmp_path / "all_all_all.mat"
    _write_lsfm(path)
    content = scipy.io.loadmat(path)
    content["trilist"][0, 0] = N_VERTICES  # 0-based: one past the last vertex
    scipy.io.savemat(path, {k: v for k, v in content.items() if not k.startswith("__")})
    with pytest.raises(ValueError, match="trilist"):
        load_lsfm(path)
