"""Tests of the batched SPD block factorisations and solves (fitting.spd_blocks) against NumPy float64 oracles."""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fitting import spd_blocks

DTYPES = ("float32", "float64")
# Relative tolerance on factors / solutions of the well-conditioned test blocks (condition ≲ 50).
RTOL = {"float32": 5e-5, "float64": 1e-11}


class _Jitted:
    """``fast.name`` is ``jax.jit(spd_blocks.name)``: one compiled program per call instead of op-by-op dispatch."""

    @functools.cache
    def __getattr__(self, name):
        return jax.jit(getattr(spd_blocks, name))


fast = _Jitted()


def _precision(dtype: str):
    """float64 arrays need x64 switched on (only inside the test)."""
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def _require_native(dtype: str = "float32") -> None:
    if jax.default_backend() != "cpu":
        pytest.skip("the compiled SPD kernel is a CPU kernel")
    if not spd_blocks.native_available(dtype):
        pytest.skip(f"compiled SPD kernel unavailable for {dtype} (no compiler or {spd_blocks.NATIVE_ENV}=0)")


# ---------------------------------------------------------------------------
# Inputs and oracles (NumPy, float64)
# ---------------------------------------------------------------------------


def _spd(rng, batch: int, n: int) -> np.ndarray:
    """Random SPD blocks with condition number ≲ 50 and varied scales."""
    basis = rng.normal(size=(batch, n, 2 * n))
    blocks = basis @ np.swapaxes(basis, -1, -2) / (2 * n) + 0.1 * np.eye(n)
    scale = np.exp(rng.uniform(-1.0, 1.0, size=(batch, 1, 1)))
    return blocks * scale


def _with_garbage_above(rng, blocks: np.ndarray) -> np.ndarray:
    """The same lower triangle, unrelated values above the diagonal (must not be read)."""
    n = blocks.shape[-1]
    garbage = rng.normal(size=blocks.shape) * 100.0
    return np.where(np.tril(np.ones((n, n), bool)), blocks, garbage)


def _free_mask(rng, batch: int, n: int) -> np.ndarray:
    free = (rng.uniform(size=(batch, n)) < 0.7).astype(np.float64)
    free[0] = 1.0  # one block fully free
    if batch > 1:
        free[1] = 0.0  # one block fully held: the identity
    return free


def _oracle_masked(blocks: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Lower triangle symmetrised, held rows and columns replaced by the identity's."""
    lower = np.tril(blocks)
    symmetric = lower + np.swapaxes(np.tril(blocks, -1), -1, -2)
    n = blocks.shape[-1]
    return symmetric * free[..., :, None] * free[..., None, :] + (1.0 - free)[..., None] * np.eye(n)


def _oracle_factor(blocks: np.ndarray, free: np.ndarray | None = None) -> np.ndarray:
    blocks = np.asarray(blocks, np.float64)
    n = blocks.shape[-1]
    shape = blocks.shape[:-1]
    free = np.ones(shape) if free is None else np.broadcast_to(np.asarray(free, np.float64), shape)
    masked = _oracle_masked(blocks, free).reshape(-1, n, n)
    out = np.empty_like(masked)
    for index, block in enumerate(masked):
        try:
            out[index] = np.linalg.cholesky(block)
        except np.linalg.LinAlgError:
            out[index] = np.diag(np.sqrt(np.maximum(np.diagonal(block), 1e-12)))
    return out.reshape(blocks.shape)


def _assert_factor_close(actual, expected, dtype: str, factor: float = 1.0) -> None:
    actual = np.asarray(actual, np.float64)
    assert actual.dtype == np.float64 and np.all(np.isfinite(actual))
    assert np.all(np.triu(actual, 1) == 0.0), "factors must be exactly zero above the diagonal"
    scale = np.max(np.abs(expected), axis=(-2, -1), keepdims=True)
    np.testing.assert_allclose(actual / scale, expected / scale, rtol=0, atol=RTOL[dtype] * factor)


def _gram_problem(rng, batch: int, m: int, p: int, skew: float = 0.1):
    """Inputs of factor_gram whose blocks are SPD, and the blocks themselves (float64, by hand).

    With ``skew``, the metric has a small antisymmetric part (so reading G_ab where
    G_ba = G_abᵀ is meant changes the lower triangle) and the corner unrelated values
    above its diagonal; only the lower triangle of the blocks is read, and its
    symmetric completion is SPD.
    """
    k = m + 3
    bases = rng.normal(size=(3, k, m)) / np.sqrt(k)
    gram = np.einsum("akm,bkn->abmn", bases, bases)  # G_ab = B_aᵀ B_b, (3, 3, m, m)
    root = rng.normal(size=(batch, 3, 3))
    metric = root @ np.swapaxes(root, -1, -2) / 3.0  # PSD 3 × 3 per block
    antisymmetric = rng.normal(size=(batch, 3, 3))
    metric = metric + skew * (antisymmetric - np.swapaxes(antisymmetric, -1, -2))
    shift = rng.uniform(0.3, 1.0, size=(batch, m + p))
    leading = np.einsum("fab,abmn->fmn", metric, gram)
    border = rng.normal(size=(batch, p, m)) * 0.5
    extra = rng.normal(size=(batch, p, p))
    schur = extra @ np.swapaxes(extra, -1, -2) / max(p, 1) + 0.5 * np.eye(p)
    reduced = np.tril(leading) + np.swapaxes(np.tril(leading, -1), -1, -2) + shift[:, :m, None] * np.eye(m)
    if np.linalg.eigvalsh(reduced).min() < 0.1:  # (a large skew could break positive definiteness)
        raise AssertionError("test problem not positive definite")
    corner = border @ np.linalg.solve(reduced, np.swapaxes(border, -1, -2)) + schur - shift[:, m:, None] * np.eye(p)
    corner = (corner + np.swapaxes(corner, -1, -2)) / 2
    if skew:  # only the corner's lower triangle is read: unrelated values above it
        corner = np.where(np.tril(np.ones((p, p), bool)), corner, rng.normal(size=corner.shape))
    blocks = np.concatenate(
        [np.concatenate([leading, np.swapaxes(border, -1, -2)], -1), np.concatenate([border, corner], -1)], -2
    ) + shift[..., None] * np.eye(m + p)
    return metric.reshape(batch, 9), gram.reshape(9, m, m), border, corner, shift, blocks


# ---------------------------------------------------------------------------
# Availability
# ---------------------------------------------------------------------------


def test_native_available_is_false_for_other_dtypes():
    assert isinstance(spd_blocks.native_available(), bool)
    assert not spd_blocks.native_available(jnp.int32)
    assert not spd_blocks.native_available(jnp.float16)
    assert not spd_blocks.native_available(jnp.complex64)


def test_docstring_example():
    lower = fast.factor(jnp.array([[4.0, 2.0], [2.0, 3.0]]))
    np.testing.assert_allclose(np.asarray(lower), [[2.0, 0.0], [1.0, np.sqrt(2.0)]], rtol=1e-6)


# ---------------------------------------------------------------------------
# factor: native kernel and LAPACK path against NumPy
# ---------------------------------------------------------------------------

FACTOR_CASES = [(1, 37), (2, 1), (5, 37), (16, 17), (59, 37)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, batch", FACTOR_CASES)
def test_factor_native_matches_numpy(dtype, n, batch):
    _require_native(dtype)
    rng = np.random.default_rng(100 + n + batch)
    blocks, free = _spd(rng, batch, n), _free_mask(rng, batch, n)
    expected = _oracle_factor(blocks, free)
    with _precision(dtype):
        raw = jnp.asarray(_with_garbage_above(rng, blocks), dtype)
        lower = fast._factor_native(raw, jnp.asarray(free, dtype))
        assert lower.dtype == jnp.dtype(dtype) and lower.shape == (batch, n, n)
        _assert_factor_close(lower, expected, dtype, factor=4.0 if n == 59 else 1.0)
        # The public entry point, called eagerly, takes the native path on the CPU and agrees.
        public = spd_blocks.factor(raw, jnp.asarray(free, dtype))
        np.testing.assert_array_equal(np.asarray(public), np.asarray(lower))


@pytest.mark.parametrize("dtype, n, batch", [("float32", 1, 37), ("float64", 5, 37), ("float32", 59, 37)])
def test_factor_lapack_matches_numpy(dtype, n, batch):
    rng = np.random.default_rng(200 + n)
    blocks, free = _spd(rng, batch, n), _free_mask(rng, batch, n)
    with _precision(dtype):
        raw = jnp.asarray(_with_garbage_above(rng, blocks), dtype)
        lower = fast._factor_lapack(raw, jnp.asarray(free, dtype))
        _assert_factor_close(lower, _oracle_factor(blocks, free), dtype, factor=4.0 if n == 59 else 1.0)


def test_factor_many_blocks_uses_all_chunks():
    """Enough matrices for several chunks on the pool's helper threads (≥ 8 chunks)."""
    rng = np.random.default_rng(3)
    batch, n = 301, 6
    blocks, free = _spd(rng, batch, n), _free_mask(rng, batch, n)
    lower = fast.factor(jnp.asarray(blocks, jnp.float32), jnp.asarray(free, jnp.float32))
    _assert_factor_close(lower, _oracle_factor(blocks, free), "float32")


def test_factor_default_and_broadcast_mask():
    rng = np.random.default_rng(4)
    blocks = _spd(rng, 2 * 3, 4).reshape(2, 3, 4, 4)
    as_f32 = jnp.asarray(blocks, jnp.float32)
    _assert_factor_close(fast.factor(as_f32), _oracle_factor(blocks), "float32")
    mask = np.array([1.0, 0.0, 1.0, 1.0])  # broadcast over both batch dimensions
    _assert_factor_close(fast.factor(as_f32, mask), _oracle_factor(blocks, mask), "float32")
    boolean = fast.factor(as_f32, jnp.asarray(mask, bool))
    np.testing.assert_array_equal(np.asarray(boolean), np.asarray(fast.factor(as_f32, mask)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_lapack_and_native_paths_agree(dtype):
    _require_native(dtype)
    rng = np.random.default_rng(5)
    batch, n, m, p = 21, 9, 7, 6
    blocks, free = _spd(rng, batch, n), _free_mask(rng, batch, n)
    blocks[4] -= 3.0 * np.eye(n) * blocks[4].max()  # not positive definite: the diagonal fallback
    metric, gram, border, corner, shift, _ = _gram_problem(rng, batch, m, p)
    gram_free = _free_mask(rng, batch, m + p)
    tolerance = RTOL[dtype]
    with _precision(dtype):
        a, f = jnp.asarray(blocks, dtype), jnp.asarray(free, dtype)
        native, lapack = fast._factor_native(a, f), fast._factor_lapack(a, f)
        np.testing.assert_allclose(np.asarray(native), np.asarray(lapack), rtol=tolerance, atol=tolerance * 10)
        assert np.count_nonzero(np.tril(np.asarray(native[4]), -1)) == 0

        args = [jnp.asarray(x, dtype) for x in (metric, gram, border, corner, shift, gram_free)]
        native, lapack = fast._factor_gram_native(*args), fast._factor_gram_lapack(*args)
        np.testing.assert_allclose(np.asarray(native), np.asarray(lapack), rtol=tolerance, atol=tolerance * 10)

        lower = fast._factor_lapack(a, f)
        rhs = jnp.asarray(rng.normal(size=(batch, n, 3)), dtype)
        native, lapack = fast._solve_native(lower, rhs), fast._solve_lapack(lower, rhs)
        np.testing.assert_allclose(np.asarray(native), np.asarray(lapack), rtol=tolerance * 10, atol=tolerance * 10)

        # diag((L Lᵀ)⁻¹) from the factors, the fallback block included (1 / its clamped diagonal).
        native = fast._factor_inverse_diagonal_native(lower)
        lapack = fast._factor_inverse_diagonal_lapack(lower)
        np.testing.assert_allclose(np.asarray(native), np.asarray(lapack), rtol=tolerance * 10)
        masked = _oracle_masked(blocks[4], free[4])
        np.testing.assert_allclose(np.asarray(native[4]), 1.0 / np.maximum(np.diagonal(masked), 1e-12), rtol=tolerance)


# ---------------------------------------------------------------------------
# solve
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, k", [("float32", 1), ("float32", 11), ("float32", 160), ("float64", 11)])
def test_solve_residual(dtype, k):
    rng = np.random.default_rng(10 + k)
    batch, n = 19, 7
    blocks, rhs = _spd(rng, batch, n), rng.normal(size=(batch, n, k))
    expected = np.linalg.solve(blocks, rhs)
    with _precision(dtype):
        lower = fast.factor(jnp.asarray(blocks, dtype))
        x = fast.solve(lower, jnp.asarray(rhs, dtype))
        assert x.shape == (batch, n, k) and x.dtype == jnp.dtype(dtype)
        x = np.asarray(x, np.float64)
    residual = np.linalg.norm(blocks @ x - rhs, axis=-2) / np.linalg.norm(rhs, axis=-2)
    assert residual.max() < 50 * RTOL[dtype], residual.max()
    np.testing.assert_allclose(x, expected, rtol=0, atol=50 * RTOL[dtype] * np.abs(expected).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_solve_native_matches_numpy(dtype):
    _require_native(dtype)
    rng = np.random.default_rng(12)
    batch, n, k = 37, 59, 5
    blocks, rhs = _spd(rng, batch, n), rng.normal(size=(batch, n, k))
    lower = np.linalg.cholesky(blocks)
    with _precision(dtype):
        # Unrelated values above the diagonal of the factor must not be read.
        garbage = jnp.asarray(_with_garbage_above(rng, lower), dtype)
        x = np.asarray(fast._solve_native(garbage, jnp.asarray(rhs, dtype)), np.float64)
    expected = np.linalg.solve(blocks, rhs)
    np.testing.assert_allclose(x, expected, rtol=0, atol=200 * RTOL[dtype] * np.abs(expected).max())


def test_solve_with_held_coordinates():
    """The masked factor solves the free coordinates' system; held ones return the right-hand side."""
    rng = np.random.default_rng(13)
    batch, n, k = 17, 8, 3
    blocks, free, rhs = _spd(rng, batch, n), _free_mask(rng, batch, n), rng.normal(size=(batch, n, k))
    x = np.asarray(fast.solve(fast.factor(jnp.asarray(blocks, jnp.float32), free), rhs), np.float64)
    masked = _oracle_masked(blocks, free)
    expected = np.linalg.solve(masked, rhs)
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    held = free == 0
    np.testing.assert_allclose(x[held], rhs[held], rtol=1e-6, atol=1e-6)


def test_solve_single_block_and_int_rhs():
    a = jnp.array([[4.0, 2.0], [2.0, 3.0]])
    x = fast.solve(fast.factor(a), jnp.array([[2], [1]]))  # integer rhs is cast to the factor's dtype
    assert x.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(x), np.linalg.solve(np.asarray(a), [[2.0], [1.0]]), rtol=1e-6)


# ---------------------------------------------------------------------------
# gram_blocks and factor_gram
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("p", [6, 0])
def test_gram_blocks_matches_numpy(p):
    rng = np.random.default_rng(20 + p)
    metric, gram, border, corner, shift, expected = _gram_problem(rng, 5, 4, p)
    blocks = fast.gram_blocks(*(jnp.asarray(x, jnp.float32) for x in (metric, gram, border, corner, shift)))
    assert blocks.shape == (5, 4 + p, 4 + p)
    np.testing.assert_allclose(np.asarray(blocks), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize(
    "dtype, m, p, batch",
    [
        ("float32", 8, 6, 37),
        ("float32", 8, 0, 37),
        ("float32", 53, 6, 37),
        ("float64", 1, 0, 3),
    ],
)
def test_factor_gram_matches_factor_of_gram_blocks(dtype, m, p, batch):
    rng = np.random.default_rng(30 + m + p)
    metric, gram, border, corner, shift, blocks = _gram_problem(rng, batch, m, p)
    free = _free_mask(rng, batch, m + p)
    expected = _oracle_factor(blocks, free)
    with _precision(dtype):
        args = [jnp.asarray(x, dtype) for x in (metric, gram, border, corner, shift)]
        free_j = jnp.asarray(free, dtype)
        lower = fast.factor_gram(*args, free_j)
        assert lower.shape == (batch, m + p, m + p) and lower.dtype == jnp.dtype(dtype)
        reference = fast.factor(fast.gram_blocks(*args), free_j)
        loose = 10.0 if m > 40 else 1.0
        scale = np.abs(np.asarray(reference)).max()
        np.testing.assert_allclose(
            np.asarray(lower), np.asarray(reference), rtol=0, atol=loose * RTOL[dtype] * scale
        )
        _assert_factor_close(lower, expected, dtype, factor=loose)


def test_factor_gram_accepts_3x3_gram_and_no_mask():
    rng = np.random.default_rng(33)
    batch, m, p = 5, 4, 6
    metric, gram, border, corner, shift, blocks = _gram_problem(rng, batch, m, p)
    lower = fast.factor_gram(metric, gram.reshape(3, 3, m, m), border, corner, shift)
    _assert_factor_close(lower, _oracle_factor(blocks), "float32")


@pytest.mark.parametrize("p", [6, 0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_factor_gram_native_matches_numpy(dtype, p):
    _require_native(dtype)
    rng = np.random.default_rng(40 + p)
    batch, m = 37, 8
    metric, gram, border, corner, shift, blocks = _gram_problem(rng, batch, m, p)
    free = _free_mask(rng, batch, m + p)
    with _precision(dtype):
        args = [jnp.asarray(x, dtype) for x in (metric, gram, border, corner, shift, free)]
        lower = fast._factor_gram_native(*args)
    _assert_factor_close(lower, _oracle_factor(blocks, free), dtype)


def test_factor_gram_single_unbatched_block():
    rng = np.random.default_rng(41)
    metric, gram, border, corner, shift, blocks = _gram_problem(rng, 1, 5, 2)
    lower = fast.factor_gram(metric[0], gram, border[0], corner[0], shift[0])
    assert lower.shape == (7, 7)
    _assert_factor_close(lower, _oracle_factor(blocks[0]), "float32")


# ---------------------------------------------------------------------------
# Blocks that are not positive definite
# ---------------------------------------------------------------------------


def _indefinite_batch(rng, batch: int, n: int):
    blocks = _spd(rng, batch, n)
    free = np.ones((batch, n))
    # Block 3: a negative eigenvalue (positive diagonal): diagonal fallback.
    vector = rng.normal(size=n)
    blocks[3] -= 5.0 * np.outer(vector, vector) / (vector @ vector) * np.abs(blocks[3]).max()
    free[3, 0] = 0.0  # the fallback uses the masked diagonal: 1 there
    # Block 8: a negative diagonal entry (fallback diagonal clamped to sqrt(1e-12)).
    blocks[8, 2, 2] = -1.0
    # Block 11: indefinite only through a held coordinate: masking makes it SPD again.
    blocks[11, 1, 1] = -4.0
    free[11, 1] = 0.0
    # Block 12: positive diagonal, but a 2 × 2 principal minor is negative.
    blocks[12, 4, 0] = blocks[12, 0, 4] = 2.0 * np.sqrt(blocks[12, 0, 0] * blocks[12, 4, 4])
    # Block 15: the same indefinite block with the offending row held: SPD.
    blocks[15] = blocks[12]
    free[15, 4] = 0.0
    return blocks, free


@pytest.mark.parametrize(
    "dtype, path", [("float32", "public"), ("float32", "native"), ("float64", "native"), ("float64", "lapack")]
)
def test_non_positive_definite_blocks_get_diagonal_factor(dtype, path):
    if path == "native":
        _require_native(dtype)
    rng = np.random.default_rng(50)
    batch, n = 19, 6
    blocks, free = _indefinite_batch(rng, batch, n)
    fallback = {3, 8, 12}
    for index in range(batch):
        eigenvalues = np.linalg.eigvalsh(_oracle_masked(blocks[index], free[index]))
        assert (eigenvalues.min() < 0) == (index in fallback)
    expected = _oracle_factor(blocks, free)
    np.testing.assert_allclose(np.diagonal(expected[8])[2], 1e-6)
    function = {
        "public": fast.factor,
        "native": fast._factor_native,
        "lapack": fast._factor_lapack,
    }[path]
    with _precision(dtype):
        lower = np.asarray(function(jnp.asarray(blocks, dtype), jnp.asarray(free, dtype)), np.float64)
    for index in fallback:
        np.testing.assert_allclose(lower[index], expected[index], rtol=1e-6)
        assert np.count_nonzero(lower[index] - np.diag(np.diagonal(lower[index]))) == 0
    _assert_factor_close(lower, expected, dtype)
    # The good blocks are exactly what they are when factorised on their own.
    with _precision(dtype):
        good = [i for i in range(batch) if i not in fallback]
        alone = function(jnp.asarray(blocks[good], dtype), jnp.asarray(free[good], dtype))
    np.testing.assert_allclose(lower[good], np.asarray(alone, np.float64), rtol=RTOL[dtype], atol=RTOL[dtype])


def test_factor_gram_non_positive_definite_fallback():
    rng = np.random.default_rng(51)
    batch, m, p = 20, 5, 6
    metric, gram, border, corner, shift, blocks = _gram_problem(rng, batch, m, p)
    corner[7] -= 50.0 * np.eye(p)  # the pose part of block 7 is negative definite
    blocks[7, m:, m:] -= 50.0 * np.eye(p)
    free = np.ones((batch, m + p))
    free[7, [1, m]] = 0.0  # held coordinates of the failing block: 1 on the fallback diagonal
    lower = np.asarray(fast.factor_gram(metric, gram, border, corner, shift, free), np.float64)
    expected = _oracle_factor(blocks, free)
    diagonal = np.where(free[7] == 1, np.diagonal(blocks[7]), 1.0)
    np.testing.assert_allclose(lower[7], np.diag(np.sqrt(np.maximum(diagonal, 1e-12))), rtol=1e-5)
    _assert_factor_close(lower, expected, "float32")


# ---------------------------------------------------------------------------
# Interleaved factors (factor_gram_interleaved, take_interleaved, solve_interleaved)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, batch", [("float32", 21), ("float64", 13)])
def test_factor_gram_interleaved_matches_factor_gram(dtype, batch):
    rng = np.random.default_rng(55)
    m, p, k = 5, 3, 2
    width = spd_blocks.lane_width(dtype)
    assert width == {"float32": 16, "float64": 8}[dtype]
    metric, gram, border, corner, shift, blocks = _gram_problem(rng, batch, m, p)
    corner[2] -= 50.0 * np.eye(p)  # block 2 is not positive definite: the diagonal fallback
    blocks[2, m:, m:] -= 50.0 * np.eye(p)
    free = _free_mask(rng, batch, m + p)
    rhs = rng.normal(size=(batch, m + p, k))
    chunks = -(-batch // width)
    with _precision(dtype):
        args = [jnp.asarray(x, dtype) for x in (metric, gram, border, corner, shift, free)]
        interleaved = fast.factor_gram_interleaved(*args)
        assert interleaved.shape == (chunks, m + p, m + p, width) and interleaved.dtype == jnp.dtype(dtype)
        lower = fast.factor_gram(*args)
        taken = fast.take_interleaved(interleaved, jnp.arange(batch))
        np.testing.assert_array_equal(np.asarray(taken), np.asarray(lower))
        x = fast.solve_interleaved(interleaved, jnp.asarray(rhs, dtype))
        np.testing.assert_allclose(
            np.asarray(x), np.asarray(fast.solve(lower, jnp.asarray(rhs, dtype))), rtol=RTOL[dtype], atol=RTOL[dtype]
        )
        reference = fast._factor_gram_interleaved_lapack(*args)
        if spd_blocks.native_available(dtype) and jax.default_backend() == "cpu":
            native = fast._factor_gram_interleaved_native(*args)
            np.testing.assert_allclose(np.asarray(native), np.asarray(reference), rtol=0, atol=10 * RTOL[dtype])
            native_x = fast._solve_interleaved_native(interleaved, jnp.asarray(rhs, dtype))
            np.testing.assert_allclose(np.asarray(native_x), np.asarray(x), rtol=RTOL[dtype], atol=RTOL[dtype])
    _assert_factor_close(taken, _oracle_factor(blocks, free), dtype)
    # Padding lanes of the last chunk hold identity factors.
    padding = np.moveaxis(np.asarray(interleaved)[-1, :, :, batch % width :], -1, 0)
    np.testing.assert_array_equal(padding, np.broadcast_to(np.eye(m + p), padding.shape))
    masked = _oracle_masked(blocks, free)
    good = np.arange(batch) != 2
    expected = np.linalg.solve(masked[good], rhs[good])
    np.testing.assert_allclose(np.asarray(x)[good], expected, rtol=0, atol=200 * RTOL[dtype])


def test_factor_gram_interleaved_with_leading_batch_dimensions():
    """metric ``(..., F, 9)`` with shared Gram matrices: one interleaved run per leading index."""
    rng = np.random.default_rng(56)
    outer, batch, m, p = 2, 21, 4, 2  # 21 frames: not a multiple of the 16 lanes
    metric, gram, border, corner, shift, _ = _gram_problem(rng, outer * batch, m, p)
    metric, border, corner, shift = (x.reshape(outer, batch, *x.shape[1:]) for x in (metric, border, corner, shift))
    args = [jnp.asarray(x, jnp.float32) for x in (metric, gram, border, corner, shift)]
    interleaved = fast.factor_gram_interleaved(*args)
    assert interleaved.shape == (outer, 2, m + p, m + p, 16)
    for i in range(outer):
        single = fast.factor_gram_interleaved(args[0][i], args[1], args[2][i], args[3][i], args[4][i])
        np.testing.assert_allclose(np.asarray(interleaved[i]), np.asarray(single), rtol=1e-6, atol=1e-6)
    rhs = rng.normal(size=(outer, batch, m + p, 1)).astype(np.float32)
    x = fast.solve_interleaved(interleaved, rhs)
    expected = fast.solve(fast.factor_gram(*args), rhs)
    np.testing.assert_allclose(np.asarray(x), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_solve_interleaved_rejects_mismatched_rhs():
    interleaved = np.broadcast_to(np.eye(3, dtype=np.float32)[None, :, :, None], (2, 3, 3, 16))
    with pytest.raises(ValueError, match="solve_interleaved"):
        spd_blocks.solve_interleaved(interleaved, np.ones((33, 3, 1), np.float32))  # 33 frames need 3 chunks
    with pytest.raises(ValueError, match="solve_interleaved"):
        spd_blocks.solve_interleaved(interleaved, np.ones((20, 4, 1), np.float32))  # wrong n
    with pytest.raises(ValueError, match="solve_interleaved"):
        spd_blocks.solve_interleaved(interleaved[..., :8], np.ones((10, 3, 1), np.float32))  # wrong lane width


# ---------------------------------------------------------------------------
# inverse_diagonal
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, n, batch", [("float32", 1, 5), ("float32", 7, 37), ("float64", 7, 37)])
def test_inverse_diagonal_matches_numpy(dtype, n, batch):
    rng = np.random.default_rng(60 + n)
    blocks = _spd(rng, batch, n)
    expected = np.diagonal(np.linalg.inv(blocks), axis1=-2, axis2=-1)
    with _precision(dtype):
        a = jnp.asarray(blocks, dtype)
        lower = fast.factor(a)
        results = {
            "public": fast.inverse_diagonal(a),
            "lapack": fast._factor_inverse_diagonal_lapack(lower),
        }
        if spd_blocks.native_available(dtype) and jax.default_backend() == "cpu":
            results["native"] = fast._factor_inverse_diagonal_native(lower)
        for name, value in results.items():
            assert value.shape == (batch, n) and value.dtype == jnp.dtype(dtype), name
            np.testing.assert_allclose(np.asarray(value, np.float64), expected, rtol=5 * RTOL[dtype], err_msg=name)


def test_factor_inverse_diagonal_of_masked_factor():
    """Held coordinates have unit variance; the free ones that of the free coordinates' system."""
    rng = np.random.default_rng(64)
    batch, n = 21, 6
    blocks, free = _spd(rng, batch, n), _free_mask(rng, batch, n)
    result = np.asarray(fast.factor_inverse_diagonal(fast.factor(jnp.asarray(blocks, jnp.float32), free)))
    expected = np.diagonal(np.linalg.inv(_oracle_masked(blocks, free)), axis1=-2, axis2=-1)
    np.testing.assert_allclose(result, expected, rtol=1e-4)
    np.testing.assert_allclose(result[free == 0], 1.0, rtol=1e-6)


def test_inverse_diagonal_of_non_spd_block_is_inverse_of_its_diagonal():
    """A block that is not positive definite gets the factor fallback: 1 / max(diagonal, 1e-12)."""
    rng = np.random.default_rng(61)
    blocks = _spd(rng, 20, 5)
    blocks[6] = -blocks[6]
    blocks[17, 0, 0] = 0.0
    blocks[17, 0, 1:] = blocks[17, 1:, 0] = 1.0
    expected = np.diagonal(np.linalg.inv(blocks), axis1=-2, axis2=-1).copy()
    bad = np.isin(np.arange(20), [6, 17])
    expected[bad] = 1.0 / np.maximum(np.diagonal(blocks[bad], axis1=-2, axis2=-1), 1e-12)
    result = np.asarray(fast.inverse_diagonal(jnp.asarray(blocks, jnp.float32)))
    assert np.isfinite(result).all()
    np.testing.assert_allclose(result, expected, rtol=5e-5)


def _symmetric_directions(n: int):
    for i in range(n):
        for j in range(i + 1):
            direction = np.zeros((n, n))
            direction[i, j] = direction[j, i] = 1.0
            yield direction


def test_inverse_diagonal_gradient_matches_finite_differences():
    rng = np.random.default_rng(62)
    batch, n = 3, 4
    blocks, weights = _spd(rng, batch, n), rng.normal(size=(batch, n))
    tangent = rng.normal(size=blocks.shape)
    tangent = tangent + np.swapaxes(tangent, -1, -2)
    with jax.enable_x64(True):
        a, w = jnp.asarray(blocks), jnp.asarray(weights)

        @jax.jit
        def objective(x):
            return jnp.sum(w * fast.inverse_diagonal(x))

        gradient = np.asarray(jax.jit(jax.grad(objective))(a))
        assert gradient.shape == (batch, n, n)
        _, derivative = jax.jit(lambda a, t: jax.jvp(spd_blocks.inverse_diagonal, (a,), (t,)))(a, jnp.asarray(tangent))
        # All perturbed blocks in one call: every symmetric unit direction (applied to every block) and the tangent.
        directions = np.stack([*_symmetric_directions(n)])[:, None] * np.ones((batch, 1, 1))
        directions = np.concatenate([directions, tangent[None]])
        step = 1e-5
        values = np.asarray(fast.inverse_diagonal(jnp.asarray(blocks + step * np.stack([directions, -directions]))))
        numeric = (values[0] - values[1]) / (2 * step)  # (directions, batch, n)
    # Reverse mode: the weighted sum's directional derivatives (each block's own).
    analytic = np.einsum("bij,dbij->db", gradient, directions[:-1])
    np.testing.assert_allclose(analytic, np.einsum("bi,dbi->db", weights, numeric[:-1]), rtol=1e-6, atol=1e-8)
    # Forward mode along a random symmetric direction.
    np.testing.assert_allclose(np.asarray(derivative), numeric[-1], rtol=1e-6, atol=1e-8)


def test_solve_of_factor_gradient_matches_finite_differences():
    """factor and solve are differentiable (through the jax.lax.linalg path): x = A⁻¹ b."""
    rng = np.random.default_rng(65)
    batch, n, k = 3, 5, 2
    blocks, rhs, weights = _spd(rng, batch, n), rng.normal(size=(batch, n, k)), rng.normal(size=(batch, n, k))
    free = np.ones((batch, n))
    free[1, 2] = 0.0
    with jax.enable_x64(True):

        @jax.jit
        def objective(a, b):
            return jnp.sum(weights * fast.solve(fast.factor(a, free), b))

        grad_a, grad_b = jax.jit(jax.grad(objective, argnums=(0, 1)))(jnp.asarray(blocks), jnp.asarray(rhs))
        step = 1e-6
        for _ in range(3):
            direction = rng.normal(size=blocks.shape)
            direction = direction + np.swapaxes(direction, -1, -2)
            change = rng.normal(size=rhs.shape)
            plus = float(objective(jnp.asarray(blocks + step * direction), jnp.asarray(rhs + step * change)))
            minus = float(objective(jnp.asarray(blocks - step * direction), jnp.asarray(rhs - step * change)))
            numeric = (plus - minus) / (2 * step)
            analytic = np.sum(np.asarray(grad_a) * direction) + np.sum(np.asarray(grad_b) * change)
            np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)
    # The analytic gradient with respect to b: A_masked⁻¹ w (A symmetric).
    np.testing.assert_allclose(np.asarray(grad_b), np.linalg.solve(_oracle_masked(blocks, free), weights), rtol=1e-9)


def test_factor_gram_gradient_matches_finite_differences():
    rng = np.random.default_rng(66)
    batch, m, p = 4, 3, 2
    metric, gram, border, corner, shift, _ = _gram_problem(rng, batch, m, p, skew=0.0)
    rhs = rng.normal(size=(batch, m + p, 1))
    with jax.enable_x64(True):

        @jax.jit
        def objective(metric, border, shift):
            lower = fast.factor_gram(metric, gram, border, corner, shift)
            return jnp.sum(fast.solve(lower, rhs) ** 2)

        args = [jnp.asarray(x) for x in (metric, border, shift)]
        gradients = jax.jit(jax.grad(objective, argnums=(0, 1, 2)))(*args)
        step = 1e-6
        directions = [rng.normal(size=x.shape) for x in (metric, border, shift)]
        square = directions[0].reshape(batch, 3, 3)
        directions[0] = (square + square.transpose(0, 2, 1)).reshape(batch, 9)  # a symmetric metric change
        plus = float(objective(*(jnp.asarray(x + step * d) for x, d in zip((metric, border, shift), directions))))
        minus = float(objective(*(jnp.asarray(x - step * d) for x, d in zip((metric, border, shift), directions))))
        numeric = (plus - minus) / (2 * step)
        analytic = sum(np.sum(np.asarray(g) * d) for g, d in zip(gradients, directions))
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6)


# ---------------------------------------------------------------------------
# vmap and jit
# ---------------------------------------------------------------------------


def test_vmap_factor_and_solve_equal_unbatched():
    rng = np.random.default_rng(70)
    outer, batch, n, k = 3, 21, 6, 4
    blocks = _spd(rng, outer * batch, n).reshape(outer, batch, n, n)
    free = _free_mask(rng, outer * batch, n).reshape(outer, batch, n)
    rhs = rng.normal(size=(outer, batch, n, k))
    a, f, b = (np.asarray(x, np.float32) for x in (blocks, free, rhs))
    lower = jax.jit(jax.vmap(spd_blocks.factor))(a, f)
    x = jax.jit(jax.vmap(spd_blocks.solve))(lower, b)
    for i in range(outer):
        single = fast.factor(a[i], f[i])
        np.testing.assert_allclose(np.asarray(lower[i]), np.asarray(single), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(x[i]), np.asarray(fast.solve(single, b[i])), rtol=1e-5, atol=1e-5)
    # A shared mask (in_axes None) and a shared right-hand side.
    shared = jax.jit(jax.vmap(spd_blocks.factor, in_axes=(0, None)))(a, f[0])
    np.testing.assert_allclose(np.asarray(shared[2]), np.asarray(fast.factor(a[2], f[0])), rtol=1e-6, atol=1e-6)
    solved = jax.jit(jax.vmap(spd_blocks.solve, in_axes=(0, None)))(lower, b[0])
    np.testing.assert_allclose(
        np.asarray(solved[1]), np.asarray(fast.solve(np.asarray(lower)[1], b[0])), rtol=1e-5, atol=1e-5
    )
    # vmap over a non-leading axis.
    moved = jax.jit(jax.vmap(spd_blocks.factor, in_axes=(1, 1), out_axes=1))(a, f)
    np.testing.assert_allclose(np.asarray(moved), np.asarray(lower), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("p", [6, 0])
def test_vmap_factor_gram_equals_unbatched(p):
    """Each vmapped video has its own Gram matrices: chunks must not straddle two of them."""
    rng = np.random.default_rng(71 + p)
    outer, batch, m = 3, 21, 5
    problems = [_gram_problem(rng, batch, m, p) for _ in range(outer)]
    stacked = [np.stack([problem[i] for problem in problems]).astype(np.float32) for i in range(5)]
    free = _free_mask(rng, outer * batch, m + p).reshape(outer, batch, m + p).astype(np.float32)
    lower = jax.jit(jax.vmap(spd_blocks.factor_gram))(*stacked, free)
    assert lower.shape == (outer, batch, m + p, m + p)
    for i in range(outer):
        single = fast.factor_gram(*(x[i] for x in stacked), free[i])
        np.testing.assert_allclose(np.asarray(lower[i]), np.asarray(single), rtol=1e-6, atol=1e-6)
        _assert_factor_close(lower[i], _oracle_factor(problems[i][5], np.asarray(free[i])), "float32")
    # Shared Gram matrices (in_axes None).
    shared_gram = jax.jit(jax.vmap(spd_blocks.factor_gram, in_axes=(0, None, 0, 0, 0, 0)))(
        stacked[0], stacked[1][0], *stacked[2:], free
    )
    for i in range(outer):
        single = fast.factor_gram(stacked[0][i], stacked[1][0], *(x[i] for x in stacked[2:]), free[i])
        np.testing.assert_allclose(np.asarray(shared_gram[i]), np.asarray(single), rtol=1e-6, atol=1e-6)


def test_vmap_inverse_diagonal_equals_unbatched():
    rng = np.random.default_rng(72)
    blocks = _spd(rng, 2 * 9, 5).reshape(2, 9, 5, 5).astype(np.float32)
    batched = jax.jit(jax.vmap(spd_blocks.inverse_diagonal))(blocks)
    np.testing.assert_allclose(np.asarray(batched[1]), np.asarray(fast.inverse_diagonal(blocks[1])), rtol=1e-6)


def test_inside_jit():
    rng = np.random.default_rng(80)
    batch, m, p, k = 19, 6, 6, 3
    metric, gram, border, corner, shift, blocks = _gram_problem(rng, batch, m, p)
    free = _free_mask(rng, batch, m + p)
    rhs = rng.normal(size=(batch, m + p, k))
    args = [jnp.asarray(x, jnp.float32) for x in (metric, gram, border, corner, shift, free)]

    @jax.jit
    def pipeline(metric, gram, border, corner, shift, free, rhs):
        lower = spd_blocks.factor_gram(metric, gram, border, corner, shift, free)
        blocks = spd_blocks.gram_blocks(metric, gram, border, corner, shift)
        return lower, spd_blocks.factor(blocks, free), spd_blocks.solve(lower, rhs), spd_blocks.inverse_diagonal(blocks)

    lower, direct, x, diagonal = pipeline(*args, jnp.asarray(rhs, jnp.float32))
    _assert_factor_close(lower, _oracle_factor(blocks, free), "float32")
    np.testing.assert_allclose(np.asarray(direct), np.asarray(lower), rtol=1e-5, atol=1e-5)
    masked = _oracle_masked(blocks, free)
    np.testing.assert_allclose(np.asarray(x), np.linalg.solve(masked, rhs), rtol=0, atol=1e-4 * np.abs(rhs).max())
    symmetric = _oracle_masked(blocks, np.ones(blocks.shape[:-1]))  # only the lower triangle is read
    expected = np.diagonal(np.linalg.inv(symmetric), axis1=-2, axis2=-1)
    np.testing.assert_allclose(np.asarray(diagonal), expected, rtol=1e-4)


# ---------------------------------------------------------------------------
# Shape errors
# ---------------------------------------------------------------------------


def test_solve_rejects_mismatched_rhs():
    lower = np.broadcast_to(np.eye(4, dtype=np.float32), (3, 4, 4))
    with pytest.raises(ValueError, match="solve"):
        spd_blocks.solve(lower, jnp.ones((3, 5, 2)))  # wrong n
    with pytest.raises(ValueError, match="solve"):
        spd_blocks.solve(lower, jnp.ones((2, 4, 2)))  # wrong batch
    with pytest.raises(ValueError, match="solve"):
        spd_blocks.solve(lower, jnp.ones((3, 4)))  # a vector, not (..., n, k)


def test_factor_gram_rejects_bad_shapes():
    rng = np.random.default_rng(90)
    metric, gram, border, corner, shift, _ = _gram_problem(rng, 4, 3, 2)
    with pytest.raises(ValueError, match="factor_gram"):
        spd_blocks.factor_gram(metric[:, :8], gram, border, corner, shift)
    with pytest.raises(ValueError, match="factor_gram"):
        spd_blocks.factor_gram(metric, gram[:8], border, corner, shift)
    with pytest.raises(ValueError, match="factor_gram"):
        spd_blocks.factor_gram(metric, gram, border[:3], corner, shift)
    with pytest.raises(ValueError, match="factor_gram"):
        spd_blocks.factor_gram(metric, gram, border, corner[:, :1], shift)
    with pytest.raises(ValueError, match="factor_gram"):
        spd_blocks.factor_gram(metric, gram, border, corner, shift[:, :4])
    with pytest.raises(ValueError, match="factor_gram"):
        spd_blocks.factor_gram(metric, gram, border[..., :2], corner, shift)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 160])
def test_solve_lower_is_forward_substitution(dtype, k):
    """``solve_lower`` is ``L⁻¹ b`` (NumPy oracle), on the public, native and LAPACK paths."""
    rng = np.random.default_rng(11)
    blocks = _spd(rng, 37, 59)
    lower = np.linalg.cholesky(blocks)
    rhs = rng.normal(size=(37, 59, k))
    expected = np.linalg.solve(lower, rhs)
    with _precision(dtype):
        lower_j, rhs_j = jnp.asarray(lower, dtype), jnp.asarray(rhs, dtype)
        paths = {"public": fast.solve_lower, "lapack": jax.jit(spd_blocks._solve_lower_lapack)}
        if spd_blocks.native_available(dtype):
            paths["native"] = jax.jit(spd_blocks._solve_lower_native)
        for name, solve_lower in paths.items():
            got = np.asarray(solve_lower(lower_j, rhs_j), np.float64)
            scale = np.abs(expected).max()
            assert np.abs(got - expected).max() <= 20 * RTOL[dtype] * scale, name
        # (L⁻¹B)ᵀ(L⁻¹C) = Bᵀ A⁻¹ C: the identity the sampled Schur complement relies on.
        forward = np.asarray(fast.solve_lower(lower_j, rhs_j), np.float64)
        full = np.asarray(fast.solve(lower_j, rhs_j), np.float64)
        np.testing.assert_allclose(
            np.swapaxes(forward, -1, -2) @ forward, np.swapaxes(rhs, -1, -2) @ full, rtol=50 * RTOL[dtype], atol=1e-3
        )
    with pytest.raises(ValueError, match="solve_lower"):
        spd_blocks.solve_lower(jnp.eye(3), jnp.ones((4, 1)))


def test_failed_kernel_build_warns_and_falls_back_to_lapack(monkeypatch, tmp_path):
    """A compiler that fails: one warning, ``native_available()`` is False and the LAPACK path answers."""
    monkeypatch.setenv("CXX", "/bin/false")
    monkeypatch.setenv("DEEPEXP3D_CACHE", str(tmp_path))
    monkeypatch.delenv(spd_blocks.NATIVE_ENV, raising=False)
    spd_blocks._library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="using LAPACK"):
            assert not spd_blocks.native_available()
        blocks = jnp.asarray(_spd(np.random.default_rng(3), 5, 4), jnp.float32)
        np.testing.assert_allclose(
            np.asarray(spd_blocks.factor(blocks)), np.linalg.cholesky(np.asarray(blocks, np.float64)), atol=1e-5
        )
        assert not list(tmp_path.glob("kernels/*.so"))
    finally:
        monkeypatch.undo()
        spd_blocks._library.cache_clear()


@pytest.mark.parametrize("interleaved", [False, True])
def test_factor_gram_without_gram_part(interleaved):
    """m = 0 (a model without expression components): only the pose corner is factorised."""
    rng = np.random.default_rng(5)
    corner = _spd(rng, 20, 6)
    args = (
        jnp.ones((20, 9), jnp.float32),
        jnp.zeros((9, 0, 0), jnp.float32),
        jnp.zeros((20, 6, 0), jnp.float32),
        jnp.asarray(corner, jnp.float32),
        jnp.zeros((20, 6), jnp.float32),
    )
    if interleaved:
        got = spd_blocks.take_interleaved(fast.factor_gram_interleaved(*args), jnp.arange(20))
    else:
        got = fast.factor_gram(*args)
    np.testing.assert_allclose(np.asarray(got), np.linalg.cholesky(corner), rtol=1e-4, atol=1e-5)
