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

Every function takes leading batch dimensions, is jittable and ``vmap``-able;
:func:`factor` and :func:`solve` are not differentiable (the fitter only calls
them inside its custom-VJP solve), :func:`inverse_diagonal` is.
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

__all__ = ["factor", "factor_gram", "gram_blocks", "solve", "inverse_diagonal", "native_available", "NATIVE_ENV"]

NATIVE_ENV = "DEEPEXP3D_NATIVE_KERNELS"
"""Set to ``0`` to always use the ``jax.lax.linalg`` path."""

_SOURCE = Path(__file__).with_name("native") / "spd_blocks.cc"
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
_TARGETS = {
    "factor": "SpdFactor",
    "factor_gram": "SpdFactorGram",
    "solve": "SpdSolve",
    "inverse_diagonal": "SpdInverseDiagonal",
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
    return _dispatch(_factor_native, _factor_lapack, blocks.dtype, blocks, free)


def gram_blocks(metric, gram, border, corner, shift) -> jax.Array:
    """Assemble the blocks that :func:`factor_gram` factorises (for inspection and the LAPACK path).

    Args:
      metric: ``(..., 9)`` per-block weights of the nine Gram matrices.
      gram: ``(9, m, m)`` (or ``(3, 3, m, m)``) shared symmetric Gram matrices.
      border: ``(..., p, m)`` the last ``p`` rows' leading part.
      corner: ``(..., p, p)`` the trailing symmetric part.
      shift: ``(..., m + p)`` added to the diagonal.

    Returns:
      ``(..., m + p, m + p)`` symmetric blocks
      ``[[Σ_ab metric_ab G_ab, borderᵀ], [border, corner]] + diag(shift)``.
    """
    m = gram.shape[-1]
    leading = (metric @ gram.reshape(9, m * m).astype(metric.dtype)).reshape(*metric.shape[:-1], m, m)
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


def factor_gram(metric, gram, border, corner, shift, free=None) -> jax.Array:
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
    metric, gram, border, corner, shift = (jnp.asarray(x) for x in (metric, gram, border, corner, shift))
    dtype = metric.dtype
    gram, border, corner, shift = (x.astype(dtype) for x in (gram, border, corner, shift))
    m, p = gram.shape[-1], border.shape[-2]
    gram = gram.reshape(-1, m, m)  # (3, 3, m, m) is accepted too
    batch = metric.shape[:-1]
    if metric.shape[-1] != 9 or gram.shape != (9, m, m):
        raise ValueError(f"factor_gram: metric (..., 9) and gram (9, m, m) expected, got {metric.shape}, {gram.shape}")
    if border.shape != (*batch, p, m) or corner.shape != (*batch, p, p) or shift.shape != (*batch, m + p):
        raise ValueError(
            f"factor_gram: border {border.shape}, corner {corner.shape}, shift {shift.shape} do not match "
            f"metric {metric.shape} and m = {m}"
        )
    free = jnp.ones(shift.shape, dtype) if free is None else jnp.broadcast_to(jnp.asarray(free, dtype), shift.shape)
    return _dispatch(_factor_gram_native, _factor_gram_lapack, dtype, metric, gram, border, corner, shift, free)


# ---------------------------------------------------------------- solve


def _solve_lapack(lower: jax.Array, rhs: jax.Array) -> jax.Array:
    return jax.scipy.linalg.cho_solve((lower, True), rhs)


def _solve_native(lower: jax.Array, rhs: jax.Array) -> jax.Array:
    return _call("solve", jax.ShapeDtypeStruct(rhs.shape, rhs.dtype), lower, rhs)


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
    lower, rhs = jnp.asarray(lower), jnp.asarray(rhs)
    rhs = rhs.astype(lower.dtype)
    if rhs.shape[:-1] != lower.shape[:-1]:
        raise ValueError(f"solve: rhs {rhs.shape} does not match factors {lower.shape} (want (..., n, k))")
    return _dispatch(_solve_native, _solve_lapack, lower.dtype, lower, rhs)


# ---------------------------------------------------------------- inverse diagonal


def _inverse_diagonal_lapack(blocks: jax.Array) -> jax.Array:
    lower = jnp.linalg.cholesky(blocks)
    eye = jnp.broadcast_to(jnp.eye(blocks.shape[-1], dtype=blocks.dtype), blocks.shape)
    inverse_factor = jax.scipy.linalg.solve_triangular(lower, eye, lower=True)
    return jnp.sum(inverse_factor**2, axis=-2)  # diag(A⁻¹) = column norms² of L⁻¹


def _inverse_diagonal_native(blocks: jax.Array) -> jax.Array:
    return _call("inverse_diagonal", jax.ShapeDtypeStruct(blocks.shape[:-1], blocks.dtype), blocks)


@jax.custom_jvp
def inverse_diagonal(blocks: jax.Array) -> jax.Array:
    """Diagonal of the inverse of symmetric positive definite blocks (e.g. variances from a normal matrix).

    Args:
      blocks: ``(..., n, n)`` symmetric positive definite.

    Returns:
      ``(..., n)`` ``diag(A⁻¹)``; NaN for a block that is not positive definite.
      Differentiable (``d diag(A⁻¹) = −diag(A⁻¹ dA A⁻¹)``).

    Examples:
      >>> inverse_diagonal(jnp.array([[4.0, 0.0], [0.0, 0.5]]))
      Array([0.25, 2.  ], dtype=float32)
    """
    blocks = jnp.asarray(blocks)
    return _dispatch(_inverse_diagonal_native, _inverse_diagonal_lapack, blocks.dtype, blocks)


@inverse_diagonal.defjvp
def _inverse_diagonal_jvp(primals, tangents):
    (blocks,), (tangent,) = primals, tangents
    inverse = jnp.linalg.inv(blocks)
    tangent_out = -jnp.einsum("...ij,...jk,...ki->...i", inverse, tangent, inverse)
    return inverse_diagonal(blocks), tangent_out
