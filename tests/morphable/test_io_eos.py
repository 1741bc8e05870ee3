"""The eos / SFM readers against eos-py 1.5.0 (the oracle) and against bad input."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from morphable.io.eos import (
    EosBlendshapes,
    EosPcaModel,
    LandmarkMapping,
    eos_to_morphable_model,
    load_sfm,
    read_eos_blendshapes,
    read_eos_model,
    read_ibug_mapping,
    read_model_contours,
)
from morphable.model import landmark_mask, shape

MODEL_FILE = "sfm_shape_3448.bin"
BLENDSHAPES_FILE = "expression_blendshapes_3448.bin"


@pytest.fixture(scope="module")
def sfm_dir(shared_data) -> Path:
    directory = shared_data / "eos-sfm"
    if not (directory / MODEL_FILE).is_file():
        pytest.skip(f"SFM files not found in {directory}")
    return directory


@pytest.fixture(scope="module")
def sfm(sfm_dir):
    return load_sfm(sfm_dir)


@pytest.fixture(scope="module")
def eos_py():
    return pytest.importorskip("eos")


# --- agreement with eos-py ---------------------------------------------------------------


def test_read_eos_model_matches_eos_py(sfm_dir, eos_py):
    data = read_eos_model(sfm_dir / MODEL_FILE)
    reference = eos_py.morphablemodel.load_model(str(sfm_dir / MODEL_FILE))
    shape_model = reference.get_shape_model()

    assert data.version == 1
    assert data.mean.dtype == np.float32 and data.mean.shape == (3448, 3)
    assert data.orthonormal_basis.dtype == np.float32 and data.orthonormal_basis.shape == (3448, 3, 63)
    assert data.triangles.dtype == np.int32 and data.triangles.shape == (6736, 3)
    # eos-py returns the flat x0, y0, z0, x1, ... layout; ours is per vertex.
    np.testing.assert_allclose(data.mean.reshape(-1), shape_model.get_mean(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        data.orthonormal_basis.reshape(-1, 63), shape_model.get_orthonormal_pca_basis(), atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(data.eigenvalues, shape_model.get_eigenvalues(), atol=1e-5, rtol=1e-7)
    np.testing.assert_array_equal(data.triangles, np.asarray(shape_model.get_triangle_list()))
    np.testing.assert_allclose(data.texture_coordinates, np.asarray(reference.get_texture_coordinates()), atol=1e-12)
    assert data.color_model is None and not reference.has_color_model()
    assert data.expression_model is None and not reference.has_separate_expression_model()


def test_read_eos_blendshapes_matches_eos_py(sfm_dir, eos_py):
    names, deformations = read_eos_blendshapes(sfm_dir / BLENDSHAPES_FILE)
    reference = eos_py.morphablemodel.load_blendshapes(str(sfm_dir / BLENDSHAPES_FILE))

    assert names == [b.name for b in reference] == ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    assert deformations.dtype == np.float32 and deformations.shape == (3448, 3, 6)
    for k, blendshape in enumerate(reference):
        np.testing.assert_allclose(deformations[..., k].reshape(-1), blendshape.deformation, atol=1e-5, rtol=0)


def _small_pca(eos_py, rng, n_vertices, n_components):
    mean = rng.normal(size=3 * n_vertices).astype(np.float32)
    basis = np.linalg.qr(rng.normal(size=(3 * n_vertices, n_components)))[0].astype(np.float32)
    eigenvalues = np.sort(rng.uniform(0.5, 4.0, n_components)).astype(np.float32)[::-1].copy()
    triangles = [[0, 1, 2], [1, 2, 3]]
    return eos_py.morphablemodel.PcaModel(mean, basis, eigenvalues, triangles), (mean, basis, eigenvalues)


def _assert_pca_equal(ours: EosPcaModel, reference):
    np.testing.assert_allclose(ours.mean.reshape(-1), reference.get_mean(), atol=1e-6)
    n_components = ours.orthonormal_basis.shape[-1]
    np.testing.assert_allclose(
        ours.orthonormal_basis.reshape(-1, n_components), reference.get_orthonormal_pca_basis(), atol=1e-6
    )
    np.testing.assert_allclose(ours.eigenvalues, reference.get_eigenvalues(), atol=1e-6)
    np.testing.assert_array_equal(ours.triangles, np.asarray(reference.get_triangle_list()))


def test_version_4_files_written_by_eos_py(tmp_path, eos_py):
    """eos-py writes the newest layout: expression model, landmark definitions, uv triangles."""
    morphablemodel = eos_py.morphablemodel
    rng = np.random.default_rng(0)
    shape_model, _ = _small_pca(eos_py, rng, 5, 3)
    expression_pca, _ = _small_pca(eos_py, rng, 5, 2)
    color_model, _ = _small_pca(eos_py, rng, 5, 4)
    blendshapes = []
    for name in ("smile", "frown"):
        blendshape = morphablemodel.Blendshape()
        blendshape.name = name
        blendshape.deformation = rng.normal(size=15).astype(np.float32)
        blendshapes.append(blendshape)
    uv = rng.uniform(size=(6, 2)).tolist()

    with_blendshapes = tmp_path / "blendshapes.bin"
    morphablemodel.save_model(
        morphablemodel.MorphableModel(shape_model, blendshapes, color_model, {"nose": 3, "chin": 0}, uv, [[0, 5, 2]]),
        str(with_blendshapes),
    )
    with_pca = tmp_path / "pca.bin"
    morphablemodel.save_model(
        morphablemodel.MorphableModel(shape_model, expression_pca, morphablemodel.PcaModel()), str(with_pca)
    )

    data = read_eos_model(with_blendshapes)
    reference = morphablemodel.load_model(str(with_blendshapes))
    assert data.version == 4
    _assert_pca_equal(data.shape_model, reference.get_shape_model())
    _assert_pca_equal(data.color_model, reference.get_color_model())
    assert isinstance(data.expression_model, EosBlendshapes)
    assert data.expression_model.names == ("smile", "frown")
    for k, blendshape in enumerate(reference.get_expression_model()):
        np.testing.assert_array_equal(data.expression_model.deformations[..., k].reshape(-1), blendshape.deformation)
    assert data.landmark_definitions == reference.get_landmark_definitions() == {"nose": 3, "chin": 0}
    np.testing.assert_array_equal(data.texture_coordinates, np.asarray(reference.get_texture_coordinates()))
    np.testing.assert_array_equal(data.texture_triangle_indices, [[0, 5, 2]])

    data = read_eos_model(with_pca)
    reference = morphablemodel.load_model(str(with_pca))
    assert isinstance(data.expression_model, EosPcaModel)
    _assert_pca_equal(data.expression_model, reference.get_expression_model())
    assert data.color_model is None and data.landmark_definitions is None
    assert data.texture_coordinates is None and data.texture_triangle_indices is None

    # A PCA expression model's mean is part of the neutral face, as in eos's get_mean().
    model = eos_to_morphable_model(data, landmark_indices=[0])
    np.testing.assert_allclose(
        shape(model, jnp.zeros(3), jnp.zeros(2)).reshape(-1), np.asarray(reference.get_mean().vertices).reshape(-1),
        atol=1e-5,
    )


def test_versions_2_and_3_as_eos_py_reads_them(tmp_path, eos_py):
    """Versions 2 and 3 differ from 4 only by trailing fields; eos-py still reads them."""
    morphablemodel = eos_py.morphablemodel
    rng = np.random.default_rng(1)
    shape_model, _ = _small_pca(eos_py, rng, 4, 2)
    expression_pca, _ = _small_pca(eos_py, rng, 4, 1)
    version_4 = tmp_path / "v4.bin"
    uv = [[0.0, 0.5], [0.5, 0.0], [1.0, 1.0], [0.25, 0.75]]
    morphablemodel.save_model(
        morphablemodel.MorphableModel(shape_model, expression_pca, morphablemodel.PcaModel(), None, uv), str(version_4)
    )
    raw = version_4.read_bytes()
    # v4 ends with: landmark-definitions empty flag (1 byte), uv count + 4 uv pairs, uv-triangle count 0.
    assert raw[-8:] == bytes(8) and raw[-(8 + 8 + 64 + 1)] == 1
    without_uv_triangles = raw[:-8]
    candidates = {
        3: struct.pack("<I", 3) + without_uv_triangles[4:],
        2: struct.pack("<I", 2) + without_uv_triangles[4 : -(8 + 64 + 1)] + without_uv_triangles[-(8 + 64) :],
    }
    for version, content in candidates.items():
        path = tmp_path / f"v{version}.bin"
        path.write_bytes(content)
        reference = morphablemodel.load_model(str(path))
        data = read_eos_model(path)
        assert data.version == version
        _assert_pca_equal(data.shape_model, reference.get_shape_model())
        _assert_pca_equal(data.expression_model, reference.get_expression_model())
        np.testing.assert_allclose(data.texture_coordinates, np.asarray(reference.get_texture_coordinates()))


# --- landmark mapping and contours ------------------------------------------------------


def test_ibug_mapping(sfm_dir, eos_py):
    mapping = read_ibug_mapping(sfm_dir / "ibug_to_sfm.txt")
    assert isinstance(mapping, LandmarkMapping)
    assert len(mapping.vertex_for_landmark) == 50
    assert 61 not in mapping.vertex_for_landmark and 65 not in mapping.vertex_for_landmark
    assert set(mapping.vertex_for_landmark) == {9, *range(18, 61), 62, 63, 64, 66, 67, 68}
    assert mapping.contour_right == tuple(range(1, 9))
    assert mapping.contour_left == tuple(range(10, 18))
    reference = eos_py.core.LandmarkMapper(str(sfm_dir / "ibug_to_sfm.txt")).get_mappings()
    assert mapping.vertex_for_landmark == {int(k): int(v) for k, v in reference.items()}


def test_model_contours(sfm_dir):
    right, left = read_model_contours(sfm_dir / "sfm_model_contours.json")
    assert len(right) == len(left) == 17
    assert (right[0], right[-1], left[0], left[-1]) == (380, 22, 795, 465)


# --- the assembled model ----------------------------------------------------------------


def test_load_sfm_layout(sfm, sfm_dir):
    assert (sfm.n_vertices, sfm.n_identity, sfm.n_expression) == (3448, 63, 6)
    assert sfm.name == "sfm_3448" and sfm.units == "mm" and sfm.expression_kind == "blendshape"
    assert sfm.expression_names == ("anger", "disgust", "fear", "happiness", "sadness", "surprise")
    np.testing.assert_array_equal(sfm.expression_lower, 0.0)
    assert np.all(np.isinf(sfm.expression_upper))
    assert len(sfm.landmark_indices) == 68 and int(landmark_mask(sfm).sum()) == 50
    assert sfm.landmark_indices[30] == 114 and sfm.landmark_indices[8] == 33  # iBUG 31 and 9
    assert all(sfm.landmark_indices[i - 1] == -1 for i in (*range(1, 9), *range(10, 18), 61, 65))
    assert (sfm.contour_right, sfm.contour_left) == read_model_contours(sfm_dir / "sfm_model_contours.json")
    assert len(sfm.triangles) == 6736

    neutral = load_sfm(sfm_dir, blendshapes=False)
    assert neutral.n_expression == 0 and neutral.expression_basis.shape == (3448, 3, 0)


def test_load_sfm_shape_matches_eos_py(sfm, sfm_dir, eos_py):
    data = read_eos_model(sfm_dir / MODEL_FILE)
    np.testing.assert_array_equal(shape(sfm, jnp.zeros(63), jnp.zeros(6)), data.mean)

    reference = eos_py.morphablemodel.load_model(str(sfm_dir / MODEL_FILE)).get_shape_model()
    for k in (0, 1, 31, 62):
        unit = np.eye(63, dtype=np.float32)[k]
        expected = data.mean + np.sqrt(data.eigenvalues[k]) * data.orthonormal_basis[..., k]
        ours = np.asarray(shape(sfm, jnp.asarray(unit), jnp.zeros(6)))
        np.testing.assert_allclose(ours, expected, atol=1e-4)
        np.testing.assert_allclose(ours.reshape(-1), reference.draw_sample(unit.tolist()), atol=1e-3)

    # A full instance against eos's own MorphableModel with the blendshapes attached.
    morphablemodel = eos_py.morphablemodel
    full = morphablemodel.MorphableModel(
        reference,
        morphablemodel.load_blendshapes(str(sfm_dir / BLENDSHAPES_FILE)),
        morphablemodel.PcaModel(),
    )
    rng = np.random.default_rng(2)
    identity = rng.normal(size=63).astype(np.float32)
    expression = rng.uniform(0.0, 1.0, size=6).astype(np.float32)
    expected = np.asarray(full.draw_sample(identity.tolist(), expression.tolist(), []).vertices)
    ours = np.asarray(shape(sfm, jnp.asarray(identity), jnp.asarray(expression)))
    np.testing.assert_allclose(ours, expected, atol=2e-3)


# --- bad input ----------------------------------------------------------------------------


def test_truncated_model_names_the_file(sfm_dir, tmp_path):
    content = (sfm_dir / MODEL_FILE).read_bytes()
    path = tmp_path / "cut.bin"
    path.write_bytes(content[:1000])
    with pytest.raises(ValueError, match=r"cut\.bin.*truncated at byte 12 while reading the shape model mean"):
        read_eos_model(path)
    # Every cut, at field boundaries and inside arrays alike, is a ValueError.
    for cut in (0, 2, 4, 8, 12, 41388, 41390, 2_648_000, len(content) - 55_176, len(content) - 1):
        path.write_bytes(content[:cut])
        with pytest.raises(ValueError, match="cut.bin"):
            read_eos_model(path)


def test_truncated_blendshapes_names_the_file(sfm_dir, tmp_path):
    content = (sfm_dir / BLENDSHAPES_FILE).read_bytes()
    path = tmp_path / "cut_blendshapes.bin"
    for cut in (0, 7, 8, 16, 20, 21, 29, 41_400, len(content) - 1):
        path.write_bytes(content[:cut])
        with pytest.raises(ValueError, match="cut_blendshapes.bin"):
            read_eos_blendshapes(path)
    path.write_bytes(content + b"\0")
    with pytest.raises(ValueError, match="1 unexpected bytes"):
        read_eos_blendshapes(path)


def test_wrong_formats_are_value_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("this is a text file, not an eos model\n" * 10)
    npz = tmp_path / "model.npz"
    np.savez(npz, mean=np.zeros((10, 3)))
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    for path in (text, npz, empty):
        with pytest.raises(ValueError, match=path.name):
            read_eos_model(path)
        with pytest.raises(ValueError, match=path.name):
            read_eos_blendshapes(path)
    with pytest.raises(ValueError, match="version 1936287860 is not supported"):
        read_eos_model(text)
    with pytest.raises(ValueError, match=r"notes\.txt.*(TOML|landmark_mappings)"):
        read_ibug_mapping(text)
    with pytest.raises(ValueError, match=r"notes\.txt.*JSON"):
        read_model_contours(text)


def test_unsupported_versions(sfm_dir, tmp_path):
    content = (sfm_dir / MODEL_FILE).read_bytes()
    for version, message in ((0, "old OpenCV format"), (5, "newer eos")):
        path = tmp_path / f"v{version}.bin"
        path.write_bytes(struct.pack("<I", version) + content[4:])
        with pytest.raises(ValueError, match=f"v{version}.bin.*class version {version} is not supported.*{message}"):
            read_eos_model(path)


def test_missing_files(tmp_path):
    missing = tmp_path / "nowhere" / "sfm_shape_3448.bin"
    for reader in (read_eos_model, read_eos_blendshapes, read_ibug_mapping, read_model_contours):
        with pytest.raises(FileNotFoundError, match="nowhere"):
            reader(missing)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_sfm(tmp_path / "nowhere")


def test_huge_sizes_fail_before_allocating(sfm_dir, tmp_path):
    content = (sfm_dir / MODEL_FILE).read_bytes()
    huge_rows = tmp_path / "huge_rows.bin"
    huge_rows.write_bytes(content[:4] + struct.pack("<i", 10**9) + content[8:])
    huge_basis = tmp_path / "huge_basis.bin"
    basis_header = 4 + 8 + 10344 * 4
    huge_basis.write_bytes(content[:basis_header] + struct.pack("<ii", 10344, 10**9) + content[basis_header + 8 :])
    negative = tmp_path / "negative.bin"
    negative.write_bytes(content[:4] + struct.pack("<i", -3) + content[8:])
    blendshapes = (sfm_dir / BLENDSHAPES_FILE).read_bytes()
    huge_count = tmp_path / "huge_count.bin"
    huge_count.write_bytes(struct.pack("<Q", 10**18) + blendshapes[8:])
    huge_name = tmp_path / "huge_name.bin"
    huge_name.write_bytes(blendshapes[:8] + struct.pack("<Q", 2**63) + blendshapes[16:])

    tracemalloc.start()
    try:
        for path, reader, message in (
            (huge_rows, read_eos_model, r"truncated at byte 12 while reading the shape model mean \(1000000000 x 1"),
            (huge_basis, read_eos_model, r"shape model basis \(10344 x 1000000000"),
            (negative, read_eos_model, "negative size -3 x 1"),
            (huge_count, read_eos_blendshapes, "claims 1000000000000000000 items"),
            (huge_name, read_eos_blendshapes, "claims 9223372036854775808 items"),
        ):
            tracemalloc.reset_peak()
            with pytest.raises(ValueError, match=path.name + ".*" + message):
                reader(path)
            # The file itself is ~2.8 MB; anything sized from the corrupt header would be gigabytes.
            assert tracemalloc.get_traced_memory()[1] < 16 * 2**20
    finally:
        tracemalloc.stop()


def test_inconsistent_content(sfm_dir, tmp_path):
    content = bytearray((sfm_dir / MODEL_FILE).read_bytes())
    triangles_at = 4 + (8 + 10344 * 4) + (8 + 10344 * 63 * 4) + (8 + 63 * 4) + 8
    content[triangles_at : triangles_at + 4] = struct.pack("<i", 3448)
    path = tmp_path / "bad_triangle.bin"
    path.write_bytes(bytes(content))
    with pytest.raises(ValueError, match="bad_triangle.bin.*triangle list: index 3448 out of range for 3448"):
        read_eos_model(path)

    mapping = tmp_path / "mapping.txt"
    mapping.write_text("[landmark_mappings]\n9 = -4\n")
    with pytest.raises(ValueError, match=r"mapping\.txt.*landmark 9 maps to -4"):
        read_ibug_mapping(mapping)
    contours = tmp_path / "contours.json"
    contours.write_text('{"model_contour": {"right_contour": [1, "2"], "left_contour": []}}')
    with pytest.raises(ValueError, match=r"contours\.json.*right_contour must be a list of integers"):
        read_model_contours(contours)
