"""Batched Cholesky factorisations and solves of many small SPD matrices.

The video fitter factorises one ``(n_e + 6)²`` block per frame and iteration
and solves with a handful of right-hand sides. XLA:CPU runs such batches as one
LAPACK call per matrix, and for 59 × 59 blocks the calls' fixed cost dominates
(about 12 µs per triangular solve whatever the number of right-hand sides). On
the CPU this module therefore uses a small C++ kernel (``native/spd_blocks.cc``,
an XLA FFI custom call): it interleaves 16 float32 (8 float64) matrices lane by
lane so every step of the textbook algorithm is one SIMD instruction over all
of them, and spreads the chunks over XLA's intra-op threads.

The kernel is compiled with the system C++ compiler (``$CXX``, else ``c++``) the
first time it is needed, for this machine's instruction set, and kept in
``$DEEPEXP3D_CACHE/kernels`` (keyed by the source, jaxlib version, compiler and
CPU). Without a compiler, for other dtypes, on accelerators, or with
``DEEPEXP3D_NATIVE_KERNELS=0``, the same functions run on
``jax.lax.linalg`` (LAPACK / cuSOLVER); both paths agree to rounding.

Every function takes leading batch dimensions and is jittable, ``vmap``-able
and differentiable (derivatives, when asked for, are those of the
``jax.lax.linalg`` path).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from morphable.paths import cache_dir

__all__ = [
    "factor",
    "factor_gram",
    "factor_gram_interleaved",
    "gram_blocks",
    "solve",
    "solve_lower",
    "solve_interleaved",
    "take_interleaved",
    "lane_width", "inverse_diagonal", "factor_inverse_diagonal", "native_available", "NATIVE_ENV"]

NATIVE_ENV = "DEEPEXP3D_NATIVE_KERNELS"
"""Set to ``0`` to always use the ``jax.lax.linalg`` path."""

_SOURCE = Path(__file__).with_name("native") / "spd_blocks.cc"
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
_TARGETS = {
    "factor": "SpdFactor",
    "factor_gram": "SpdFactorGram",
    "factor_gram_interleaved": "SpdFactorGramInterleaved",
    "solve": "SpdSolve",
    "solve_lower": "SpdSolveLower",
    "solve_interleaved": "SpdSolveInterleaved",
    "factor_inverse_diagonal": "SpdInverseDiagonal",
}
_SUFFIX = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64"}


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str | None:
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def _compile(compiler: str, target: Path) -> None:
    """Compile the kernel into ``target`` (atomically: concurrent processes may race)."""
    include = jax.ffi.include_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        output = Path(scratch) / target.name
        command = [compiler, *_FLAGS, f"-I{include}", "-o", str(output), str(_SOURCE)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        os.replace(output, target)


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The compiled kernel with its FFI targets registered, or None (then LAPACK is used)."""
    if os.environ.get(NATIVE_ENV, "1") == "0":
        return None
    compiler = _compiler()
    if compiler is None:
        return None
    import jaxlib

    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(
        "\n".join([_SOURCE.read_text(), jaxlib.__version__, version, " ".join(_FLAGS), _cpu_flags()]).encode()
    ).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"spd_blocks-{key}.so"
    try:
        if not target.exists():
            _compile(compiler, target)
        library = ctypes.cdll.LoadLibrary(str(target))
        for symbol in _TARGETS.values():
            for suffix in _SUFFIX.values():
                name = f"deepexp3d_{symbol}{suffix}"
                jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol + suffix)), platform="cpu")
                jax.ffi.register_ffi_target_as_batch_partitionable(name)
    except (OSError, RuntimeError, AttributeError) as error:
        warnings.warn(f"SPD block kernel unavailable, using LAPACK: {error}", RuntimeWarning, stacklevel=3)
        return None
    return library


def native_available(dtype=jnp.float32) -> bool:
    """Whether the compiled CPU kernel serves ``dtype`` (compiling it on first call).

    Examples:
      >>> isinstance(native_available(), bool)
      True
    """
    return np.dtype(dtype) in _SUFFIX and _library() is not None


def _call(kind: str, result: jax.ShapeDtypeStruct, *args):
    name = f"deepexp3d_{_TARGETS[kind]}{_SUFFIX[np.dtype(result.dtype)]}"
    return jax.ffi.ffi_call(name, result, vmap_method="broadcast_all")(*args)


def _dispatch(native, fallback, dtype, *args):
    """``native`` on the CPU when the kernel is there, else ``fallback`` (same results to rounding)."""
    if not native_available(dtype):
        return fallback(*args)
    return jax.lax.platform_dependent(*args, cpu=native, default=fallback)


def _accelerated(native, reference):
    """``reference``'s function, run by ``native`` where possible, differentiated through ``reference``."""

    @jax.custom_jvp
    def call(*args):
        return _dispatch(native, reference, args[0].dtype, *args)

    @call.defjvp
    def _jvp(primals, tangents):
        return jax.jvp(reference, primals, tangents)

    return call


# ---------------------------------------------------------------- factor


def _masked(blocks: jax.Array, free: jax.Array) -> jax.Array:
    eye = jnp.eye(blocks.shape[-1], dtype=blocks.dtype)
    return blocks * free[..., :, None] * free[..., None, :] + (1.0 - free)[..., None] * eye


def _factor_lapack(blocks: jax.Array, free: jax.Array) -> jax.Array:
    masked = _masked(blocks, free)
    lower = jax.lax.linalg.cholesky(masked, symmetrize_input=False)
    finite = jnp.all(jnp.isfinite(jnp.diagonal(lower, axis1=-2, axis2=-1)), axis=-1)
    diagonal = jnp.sqrt(jnp.maximum(jnp.diagonal(masked, axis1=-2, axis2=-1), 1e-12))
    fallback = diagonal[..., None] * jnp.eye(blocks.shape[-1], dtype=blocks.dtype)
    return jnp.where(finite[..., None, None], jnp.tril(lower), fallback)


def _factor_native(blocks: jax.Array, free: jax.Array) -> jax.Array:
    return _call("factor", jax.ShapeDtypeStruct(blocks.shape, blocks.dtype), blocks, free)


_factor = _accelerated(_factor_native, _factor_lapack)


def factor(blocks: jax.Array, free: jax.Array | None = None) -> jax.Array:
    """Lower Cholesky factors of symmetric positive definite blocks, some coordinates held.

    Row and column ``i`` of a block are replaced by those of the identity where
    ``free[..., i] == 0`` (a coordinate held fixed), so the factor solves the
    system of the free coordinates alone. A block that is not positive definite
    at the working precision gets the square root of its (masked) diagonal:
    solving with it is a diagonally scaled gradient step.

    Args:
      blocks: ``(..., n, n)`` symmetric; only the lower triangle is read.
      free: ``(..., n)`` 1 for free coordinates, 0 for held ones (default all free).

    Returns:
      ``(..., n, n)`` lower-triangular factors ``L`` (zeros above the diagonal).

    Examples:
      >>> a = jnp.array([[4.0, 2.0], [2.0, 3.0]])
      >>> factor(a)
      Array([[2.       , 0.       ],
             [1.       , 1.4142135]], dtype=float32)
    """
    blocks = jnp.asarray(blocks)
    free = jnp.ones(blocks.shape[:-1], blocks.dtype) if free is None else jnp.asarray(free, blocks.dtype)
    free = jnp.broadcast_to(free, blocks.shape[:-1])
    return _factor(blocks, free)


def gram_blocks(metric, gram, border=None, corner=None, shift=None) -> jax.Array:
    """Assemble the blocks that :func:`factor_gram` factorises (for inspection and the LAPACK path).

    Args:
      metric: ``(..., 9)`` per-block weights of the nine Gram matrices.
      gram: ``(9, m, m)`` (or ``(3, 3, m, m)``) shared symmetric Gram matrices.
      border: ``(..., p, m)`` the last ``p`` rows' leading part (default: none, ``p = 0``).
      corner: ``(..., p, p)`` the trailing symmetric part (default: none).
      shift: ``(..., m + p)`` added to the diagonal (default 0).

    Returns:
      ``(..., m + p, m + p)`` symmetric blocks
      ``[[Σ_ab metric_ab G_ab, borderᵀ], [border, corner]] + diag(shift)``.
    """
    metric, gram, border, corner, shift, _ = _gram_arguments(metric, gram, border, corner, shift, None)
    m = gram.shape[-1]
    leading = (metric @ gram.reshape(9, m * m)).reshape(*metric.shape[:-1], m, m)
    blocks = jnp.concatenate(
        [jnp.concatenate([leading, jnp.swapaxes(border, -1, -2)], -1), jnp.concatenate([border, corner], -1)], -2
    )
    return blocks + shift[..., None] * jnp.eye(blocks.shape[-1], dtype=blocks.dtype)


def _factor_gram_lapack(metric, gram, border, corner, shift, free):
    return _factor_lapack(gram_blocks(metric, gram, border, corner, shift), free)


def _factor_gram_native(metric, gram, border, corner, shift, free):
    n = gram.shape[-1] + border.shape[-2]
    result = jax.ShapeDtypeStruct((*metric.shape[:-1], n, n), metric.dtype)
    return _call("factor_gram", result, metric, gram, border, corner, shift, free)


def _gram_arguments(metric, gram, border, corner, shift, free):
    """Validated, dtype-matched arguments of :func:`factor_gram` (missing border/corner: ``p = 0``; shift: 0)."""
    metric, gram = jnp.asarray(metric), jnp.asarray(gram)
    dtype, batch, m = metric.dtype, metric.shape[:-1], gram.shape[-1]
    border = jnp.zeros((*batch, 0, m), dtype) if border is None else jnp.asarray(border, dtype)
    p = border.shape[-2] if border.ndim >= 2 else 0
    corner = jnp.zeros((*batch, p, p), dtype) if corner is None else jnp.asarray(corner, dtype)
    shift = jnp.zeros((*batch, m + p), dtype) if shift is None else jnp.asarray(shift, dtype)
    gram = gram.astype(dtype)
    if gram.ndim == 4:  # (3, 3, m, m) is accepted too
        gram = gram.reshape(gram.shape[0] * gram.shape[1], m, m)
    if metric.shape[-1] != 9 or gram.shape != (9, m, m):
        raise ValueError(f"factor_gram: metric (..., 9) and gram (9, m, m) expected, got {metric.shape}, {gram.shape}")
    if border.shape != (*batch, p, m) or corner.shape != (*batch, p, p) or shift.shape != (*batch, m + p):
        raise ValueError(
            f"factor_gram: border {border.shape}, corner {corner.shape}, shift {shift.shape} do not match "
            f"metric {metric.shape} and m = {m}"
        )
    free = jnp.ones(shift.shape, dtype) if free is None else jnp.broadcast_to(jnp.asarray(free, dtype), shift.shape)
    return metric, gram, border, corner, shift, free


_factor_gram = _accelerated(_factor_gram_native, _factor_gram_lapack)


def factor_gram(metric, gram, border=None, corner=None, shift=None, free=None) -> jax.Array:
    """:func:`factor` of the blocks :func:`gram_blocks` describes, without forming them in memory.

    The video fitter's per-frame normal blocks are nine scaled Gram matrices
    plus a few pose rows; on the CPU kernel they are assembled inside the
    factorisation (the ``(F, n, n)`` blocks never pass through memory).

    Args:
      metric, gram, border, corner, shift: as in :func:`gram_blocks`.
      free: ``(..., m + p)`` 1 for free coordinates, 0 for held ones (default all free).

    Returns:
      ``(..., m + p, m + p)`` lower-triangular factors (as :func:`factor`).

    Examples:
      >>> gram = jnp.zeros((9, 2, 2)).at[0].set(jnp.eye(2))
      >>> metric = jnp.zeros((1, 9)).at[0, 0].set(4.0)
      >>> border, corner, shift = jnp.ones((1, 1, 2)), jnp.full((1, 1, 1), 3.0), jnp.zeros((1, 3))
      >>> bool(jnp.allclose(factor_gram(metric, gram, border, corner, shift),
      ...                   factor(gram_blocks(metric, gram, border, corner, shift)), atol=1e-6))
      True
    """
    metric, gram, border, corner, shift, free = _gram_arguments(metric, gram, border, corner, shift, free)
    if gram.shape[-1] == 0:  # no Gram part (e.g. a model without expressions): nothing for the kernel to assemble
        return _factor_gram_lapack(metric, gram, border, corner, shift, free)
    return _factor_gram(metric, gram, border, corner, shift, free)


# ---------------------------------------------------------------- interleaved factors


def lane_width(dtype) -> int:
    """Matrices per interleaved chunk: 64 bytes of lanes (16 float32, 8 float64)."""
    return 64 // np.dtype(dtype).itemsize


def _interleave(lower: jax.Array) -> jax.Array:
    """``(..., F, n, n)`` → ``(..., ceil(F / W), n, n, W)``, padding with identity factors."""
    width = lane_width(lower.dtype)
    n_frames, n = lower.shape[-3], lower.shape[-1]
    chunks = -(-n_frames // width)
    pad = jnp.broadcast_to(jnp.eye(n, dtype=lower.dtype), (*lower.shape[:-3], chunks * width - n_frames, n, n))
    padded = jnp.concatenate([lower, pad], -3).reshape(*lower.shape[:-3], chunks, width, n, n)
    return jnp.moveaxis(padded, -3, -1)


def _deinterleave(interleaved: jax.Array, n_frames: int) -> jax.Array:
    chunks, n, width = interleaved.shape[-4], interleaved.shape[-2], interleaved.shape[-1]
    frames = jnp.moveaxis(interleaved, -1, -3).reshape(*interleaved.shape[:-4], chunks * width, n, n)
    return frames[..., :n_frames, :, :]


def _factor_gram_interleaved_lapack(metric, gram, border, corner, shift, free):
    return _interleave(_factor_gram_lapack(metric, gram, border, corner, shift, free))


def _factor_gram_interleaved_native(metric, gram, border, corner, shift, free):
    n = gram.shape[-1] + border.shape[-2]
    width = lane_width(metric.dtype)
    chunks = -(-metric.shape[-2] // width)
    result = jax.ShapeDtypeStruct((*metric.shape[:-2], chunks, n, n, width), metric.dtype)
    return _call("factor_gram_interleaved", result, metric, gram, border, corner, shift, free)


_factor_gram_interleaved = _accelerated(_factor_gram_interleaved_native, _factor_gram_interleaved_lapack)


def factor_gram_interleaved(metric, gram, border=None, corner=None, shift=None, free=None) -> jax.Array:
    """:func:`factor_gram` with the factors interleaved lane by lane, for :func:`solve_interleaved`.

    Chunk ``c`` holds matrices ``c·W … c·W + W − 1`` (``W =`` :func:`lane_width`)
    as ``[c, i, j, lane]``; the last chunk is padded with identity factors.
    Skips the CPU kernel's transposition to and from the usual layout when
    the factors are only solved with.

    Args:
      metric: ``(..., F, 9)``; gram, border, corner, shift, free: as in :func:`factor_gram`.

    Returns:
      ``(..., ceil(F / W), n, n, W)``.

    Examples:
      >>> gram = jnp.zeros((9, 2, 2)).at[0].set(jnp.eye(2))
      >>> metric, shift = jnp.ones((3, 9)), jnp.ones((3, 2))
      >>> factor_gram_interleaved(metric, gram, shift=shift).shape
      (1, 2, 2, 16)
      >>> bool(jnp.allclose(take_interleaved(factor_gram_interleaved(metric, gram, shift=shift), jnp.arange(3)),
      ...                   factor_gram(metric, gram, shift=shift)))
      True
    """
    metric, gram, border, corner, shift, free = _gram_arguments(metric, gram, border, corner, shift, free)
    if metric.ndim < 2:
        raise ValueError(f"factor_gram_interleaved: metric must be (..., F, 9), got {metric.shape}")
    if gram.shape[-1] == 0:
        return _factor_gram_interleaved_lapack(metric, gram, border, corner, shift, free)
    return _factor_gram_interleaved(metric, gram, border, corner, shift, free)


def take_interleaved(interleaved: jax.Array, index: jax.Array) -> jax.Array:
    """Factors ``(K, n, n)`` of matrices ``index (K,)`` from :func:`factor_gram_interleaved` output ``(C, n, n, W)``."""
    width = interleaved.shape[-1]
    return interleaved[index // width, :, :, index % width]


def _solve_interleaved_lapack(interleaved: jax.Array, rhs: jax.Array) -> jax.Array:
    return _solve_lapack(_deinterleave(interleaved, rhs.shape[-3]), rhs)


def _solve_interleaved_native(interleaved: jax.Array, rhs: jax.Array) -> jax.Array:
    return _call("solve_interleaved", jax.ShapeDtypeStruct(rhs.shape, rhs.dtype), interleaved, rhs)


_solve_interleaved = _accelerated(_solve_interleaved_native, _solve_interleaved_lapack)


def solve_interleaved(interleaved: jax.Array, rhs: jax.Array) -> jax.Array:
    """:func:`solve` with factors from :func:`factor_gram_interleaved`.

    Args:
      interleaved: ``(..., ceil(F / W), n, n, W)``.
      rhs: ``(..., F, n, k)``.

    Returns:
      ``(..., F, n, k)``.
    """
    interleaved, rhs = jnp.asarray(interleaved), jnp.asarray(rhs)
    rhs = rhs.astype(interleaved.dtype)
    width, n = interleaved.shape[-1], interleaved.shape[-2]
    if (
        rhs.ndim < 3
        or width != lane_width(interleaved.dtype)
        or rhs.shape[-2] != n
        or interleaved.shape[-4] != -(-rhs.shape[-3] // width)
        or rhs.shape[:-3] != interleaved.shape[:-4]
    ):
        raise ValueError(f"solve_interleaved: rhs {rhs.shape} does not match interleaved factors {interleaved.shape}")
    return _solve_interleaved(interleaved, rhs)


# ---------------------------------------------------------------- solve


def _solve_lapack(lower: jax.Array, rhs: jax.Array) -> jax.Array:
    return jax.scipy.linalg.cho_solve((lower, True), rhs)


def _solve_native(lower: jax.Array, rhs: jax.Array) -> jax.Array:
    return _call("solve", jax.ShapeDtypeStruct(rhs.shape, rhs.dtype), lower, rhs)


def _solve_arguments(name: str, lower, rhs):
    """``(lower, rhs)`` as arrays of the factors' dtype, their shapes checked."""
    lower, rhs = jnp.asarray(lower), jnp.asarray(rhs)
    rhs = rhs.astype(lower.dtype)
    if rhs.shape[:-1] != lower.shape[:-1]:
        raise ValueError(f"{name}: rhs {rhs.shape} does not match factors {lower.shape} (want (..., n, k))")
    return lower, rhs


_solve = _accelerated(_solve_native, _solve_lapack)


def solve(lower: jax.Array, rhs: jax.Array) -> jax.Array:
    """Solve ``L Lᵀ x = b`` for every block, given the factors of :func:`factor`.

    Args:
      lower: ``(..., n, n)`` lower-triangular factors.
      rhs: ``(..., n, k)`` right-hand sides (the same leading dimensions).

    Returns:
      ``(..., n, k)``.

    Examples:
      >>> a = jnp.array([[4.0, 2.0], [2.0, 3.0]])
      >>> x = solve(factor(a), jnp.array([[2.0], [1.0]]))
      >>> bool(jnp.allclose(a @ x, jnp.array([[2.0], [1.0]]), atol=1e-6))
      True
    """
    return _solve(*_solve_arguments("solve", lower, rhs))


def _solve_lower_lapack(lower: jax.Array, rhs: jax.Array) -> jax.Array:
    return jax.lax.linalg.triangular_solve(lower, rhs, left_side=True, lower=True)


def _solve_lower_native(lower: jax.Array, rhs: jax.Array) -> jax.Array:
    return _call("solve_lower", jax.ShapeDtypeStruct(rhs.shape, rhs.dtype), lower, rhs)


_solve_lower = _accelerated(_solve_lower_native, _solve_lower_lapack)


def solve_lower(lower: jax.Array, rhs: jax.Array) -> jax.Array:
    """``L⁻¹ b`` for every block (the first half of :func:`solve`).

    ``(L⁻¹ B)ᵀ (L⁻¹ C) = Bᵀ A⁻¹ C``: a Schur complement costs one forward
    substitution and a matrix product instead of a full solve.

    Args:
      lower: ``(..., n, n)`` lower-triangular factors.
      rhs: ``(..., n, k)``.

    Returns:
      ``(..., n, k)``.

    Examples:
      >>> a = jnp.array([[4.0, 2.0], [2.0, 3.0]])
      >>> y = solve_lower(factor(a), jnp.eye(2))
      >>> bool(jnp.allclose(y.T @ y, jnp.linalg.inv(a), atol=1e-6))
      True
    """
    return _solve_lower(*_solve_arguments("solve_lower", lower, rhs))


# ---------------------------------------------------------------- inverse diagonal


def _factor_inverse_diagonal_lapack(lower: jax.Array) -> jax.Array:
    eye = jnp.broadcast_to(jnp.eye(lower.shape[-1], dtype=lower.dtype), lower.shape)
    inverse_factor = jax.scipy.linalg.solve_triangular(lower, eye, lower=True)
    return jnp.sum(inverse_factor**2, axis=-2)  # diag(A⁻¹) = column norms² of L⁻¹


def _factor_inverse_diagonal_native(lower: jax.Array) -> jax.Array:
    return _call("factor_inverse_diagonal", jax.ShapeDtypeStruct(lower.shape[:-1], lower.dtype), lower)


_factor_inverse_diagonal = _accelerated(_factor_inverse_diagonal_native, _factor_inverse_diagonal_lapack)


def factor_inverse_diagonal(lower: jax.Array) -> jax.Array:
    """``diag((L Lᵀ)⁻¹)`` from Cholesky factors (e.g. variances from a factored normal matrix).

    Args:
      lower: ``(..., n, n)`` lower-triangular factors (:func:`factor`, :func:`factor_gram`).

    Returns:
      ``(..., n)``.

    Examples:
      >>> factor_inverse_diagonal(factor(jnp.array([[4.0, 0.0], [0.0, 0.25]])))
      Array([0.25, 4.  ], dtype=float32)
    """
    return _factor_inverse_diagonal(jnp.asarray(lower))


def inverse_diagonal(blocks: jax.Array) -> jax.Array:
    """Diagonal of the inverse of symmetric positive definite blocks.

    A block that is not positive definite at the working precision gets the
    inverse of its diagonal (the :func:`factor` fallback).

    Args:
      blocks: ``(..., n, n)`` symmetric positive definite.

    Returns:
      ``(..., n)`` ``diag(A⁻¹)``.

    Examples:
      >>> inverse_diagonal(jnp.array([[4.0, 0.0], [0.0, 0.25]]))
      Array([0.25, 4.  ], dtype=float32)
    """
    return factor_inverse_diagonal(factor(blocks))
