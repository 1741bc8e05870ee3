"""The morphable model pytree: evaluation against an explicit NumPy reference,
gradients, batching, jit/vmap behaviour, validation and sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from morphable.model import (
    MorphableModel,
    Topology,
    landmark_mask,
    landmarks,
    make_model,
    sample,
    shape,
    vertices_at,
)

N_VERTICES, N_IDENTITY, N_EXPRESSION = 7, 4, 3
TRIANGLES = [[0, 1, 2], [1, 2, 3], [2, 3, 4], [4, 5, 6]]
LANDMARKS = (3, 0, 6, 2, 5)
MASKED_LANDMARKS = (3, -1, 6, -1, 5)


def _arrays(seed: int) -> dict[str, np.ndarray]:
    """Random model arrays, already float32 so the float64 reference sees the same numbers."""
    rng = np.random.default_rng(seed)
    return {
        "mean": rng.normal(size=(N_VERTICES, 3)).astype(np.float32),
        "identity_basis": rng.normal(size=(N_VERTICES, 3, N_IDENTITY)).astype(np.float32),
        "expression_basis": rng.normal(size=(N_VERTICES, 3, N_EXPRESSION)).astype(np.float32),
        "identity_std": rng.uniform(0.5, 2.0, N_IDENTITY).astype(np.float32),
        "expression_std": rng.uniform(0.5, 2.0, N_EXPRESSION).astype(np.float32),
    }


def _build(arrays: dict[str, np.ndarray], landmark_indices=LANDMARKS, **kwargs) -> MorphableModel:
    a = dict(arrays)
    return make_model(
        a.pop("mean"),
        a.pop("identity_basis"),
        a.pop("expression_basis"),
        triangles=np.array(TRIANGLES),
        landmark_indices=landmark_indices,
        **a,
        **kwargs,
    )


ARRAYS = _arrays(0)
MODEL = _build(ARRAYS)
MASKED_MODEL = _build(ARRAYS, MASKED_LANDMARKS)


def _reference_shape(arrays, identity, expression) -> np.ndarray:
    """``mean + B_id (σ_id ⊙ i) + B_exp (σ_exp ⊙ e)`` on the flat ``(3N, k)`` bases, float64.

    ``identity``/``expression`` are broadcast against each other; ``(..., N, 3)``.
    """
    n = arrays["mean"].shape[0]
    mean = arrays["mean"].astype(np.float64).reshape(3 * n)
    identity_basis = arrays["identity_basis"].astype(np.float64).reshape(3 * n, -1)
    expression_basis = arrays["expression_basis"].astype(np.float64).reshape(3 * n, -1)
    identity, expression = np.asarray(identity, np.float64), np.asarray(expression, np.float64)
    batch = np.broadcast_shapes(identity.shape[:-1], expression.shape[:-1])
    identity = np.broadcast_to(identity, (*batch, identity.shape[-1])).reshape(-1, identity.shape[-1])
    expression = np.broadcast_to(expression, (*batch, expression.shape[-1])).reshape(-1, expression.shape[-1])
    out = [
        mean + identity_basis @ (arrays["identity_std"] * i) + expression_basis @ (arrays["expression_std"] * e)
        for i, e in zip(identity, expression)
    ]
    return np.array(out).reshape(*batch, n, 3)


def _coefficients(seed: int, identity_batch=(), expression_batch=()):
    rng = np.random.default_rng(seed)
    identity = rng.normal(size=(*identity_batch, N_IDENTITY)).astype(np.float32)
    expression = rng.normal(size=(*expression_batch, N_EXPRESSION)).astype(np.float32)
    return identity, expression


@jax.jit
def _shape_and_landmarks(model, identity, expression):
    return shape(model, identity, expression), landmarks(model, identity, expression)


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------


def test_shape_matches_numpy_reference():
    identity, expression = _coefficients(1, (3, 2), (3, 2))
    result = np.asarray(_shape_and_landmarks(MODEL, identity, expression)[0])
    np.testing.assert_allclose(result, _reference_shape(ARRAYS, identity, expression), rtol=1e-5, atol=1e-5)
    # Zero coefficients give the mean exactly.
    zeros = _shape_and_landmarks(MODEL, np.zeros((3, 2, N_IDENTITY)), np.zeros((3, 2, N_EXPRESSION)))[0]
    np.testing.assert_array_equal(np.asarray(zeros)[1, 1], ARRAYS["mean"])


def test_flat_layout_is_vertex_major():
    # (3N,) mean and (3N, k) bases are (x0, y0, z0, x1, ...): the same model as (N, 3[, k]).
    flat = make_model(
        ARRAYS["mean"].reshape(-1),
        ARRAYS["identity_basis"].reshape(3 * N_VERTICES, N_IDENTITY),
        ARRAYS["expression_basis"].reshape(3 * N_VERTICES, N_EXPRESSION),
        triangles=TRIANGLES,
        landmark_indices=LANDMARKS,
        identity_std=ARRAYS["identity_std"],
        expression_std=ARRAYS["expression_std"],
    )
    for name in ("mean", "identity_basis", "expression_basis", "identity_std", "expression_std"):
        np.testing.assert_array_equal(np.asarray(getattr(flat, name)), ARRAYS[name], err_msg=name)
    assert flat.mean.dtype == jnp.float32 and flat.identity_basis.dtype == jnp.float32


def test_landmarks_gather_the_landmark_vertices():
    identity, expression = _coefficients(2, (3, 2), (3, 2))
    full, points = map(np.asarray, _shape_and_landmarks(MODEL, identity, expression))
    assert points.shape == (3, 2, len(LANDMARKS), 3)
    np.testing.assert_allclose(points, full[..., list(LANDMARKS), :], rtol=1e-6, atol=1e-6)
    assert landmark_mask(MODEL).all()


def test_masked_landmarks_are_finite_and_valid_ones_unchanged():
    identity, expression = _coefficients(2, (3, 2), (3, 2))
    full, points = map(np.asarray, _shape_and_landmarks(MASKED_MODEL, identity, expression))
    mask = landmark_mask(MASKED_MODEL)
    np.testing.assert_array_equal(mask, [True, False, True, False, True])
    valid = np.array(MASKED_LANDMARKS)[mask]
    np.testing.assert_allclose(points[..., mask, :], full[..., valid, :], rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(points))
    # Documented placement: at the mean of the valid landmark vertices.
    centre = full[..., valid, :].mean(axis=-2)
    for row in np.flatnonzero(~mask):
        np.testing.assert_allclose(points[..., row, :], centre, rtol=1e-6, atol=1e-6)


def test_model_without_any_landmark_vertex_gives_finite_landmarks():
    model = _build(ARRAYS, (-1, -1, -1))
    points = np.asarray(_shape_and_landmarks(model, *_coefficients(3))[1])
    assert points.shape == (3, 3)
    assert np.all(np.isfinite(points))


def test_vertices_at_equals_shape_rows_and_clips_indices():
    identity, expression = _coefficients(4, (3, 2), (3, 2))
    full = np.asarray(_shape_and_landmarks(MODEL, identity, expression)[0])
    rows = np.asarray(jax.jit(vertices_at)(MODEL, jnp.array([6, 0, 3, 99, -5]), identity, expression))
    np.testing.assert_allclose(rows, full[..., [6, 0, 3, N_VERTICES - 1, 0], :], rtol=1e-6, atol=1e-6)


BATCH_CASES = {
    "scalar": ((), ()),
    "one": ((1,), (1,)),
    "grid": ((3, 2), (3, 2)),
    "one identity, grid of expressions": ((), (3, 2)),
    "broadcast both": ((3, 1), (2,)),
}


@pytest.mark.parametrize("identity_batch, expression_batch", BATCH_CASES.values(), ids=BATCH_CASES.keys())
def test_batch_shapes_and_broadcasting(identity_batch, expression_batch):
    identity, expression = _coefficients(5, identity_batch, expression_batch)
    batch = np.broadcast_shapes(identity_batch, expression_batch)
    full, points = map(np.asarray, _shape_and_landmarks(MASKED_MODEL, identity, expression))
    assert full.shape == (*batch, N_VERTICES, 3)
    assert points.shape == (*batch, len(MASKED_LANDMARKS), 3)
    np.testing.assert_allclose(full, _reference_shape(ARRAYS, identity, expression), rtol=1e-5, atol=1e-5)
    mask = landmark_mask(MASKED_MODEL)
    valid = np.array(MASKED_LANDMARKS)[mask]
    np.testing.assert_allclose(points[..., mask, :], full[..., valid, :], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------


def test_check_grads_shape_and_landmarks():
    identity, expression = _coefficients(6, (2,), (2,))
    with jax.enable_x64(True):
        model = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), MODEL)
        masked = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), MASKED_MODEL)

        @jax.jit
        def evaluate(identity, expression):
            return shape(model, identity, expression), landmarks(masked, identity, expression)

        args = (jnp.asarray(identity, jnp.float64), jnp.asarray(expression, jnp.float64))
        check_grads(evaluate, args, order=1, modes=("fwd", "rev"))


def test_jacobians_are_the_scaled_bases():
    identity, expression = _coefficients(7)
    jacobians = jax.jit(jax.jacrev(shape, argnums=(1, 2)))(MODEL, identity, expression)
    np.testing.assert_allclose(jacobians[0], ARRAYS["identity_basis"] * ARRAYS["identity_std"], rtol=1e-6)
    np.testing.assert_allclose(jacobians[1], ARRAYS["expression_basis"] * ARRAYS["expression_std"], rtol=1e-6)


# ---------------------------------------------------------------------------
# jit, vmap and static metadata
# ---------------------------------------------------------------------------


@jax.jit
def _mapped(models, identity, expression):
    """vmap over coefficients (one model), and over stacked models (one coefficient set)."""
    over_coefficients = jax.vmap(lambda i, e: landmarks(MASKED_MODEL, i, e))(identity, expression)
    over_models = jax.vmap(shape, in_axes=(0, None, None))(models, identity[0], expression[0])
    return over_coefficients, over_models


def test_jit_and_vmap_agree_with_the_reference():
    identity, expression = _coefficients(8, (5,), (5,))
    other_arrays = _arrays(9)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), MODEL, _build(other_arrays))
    over_coefficients, over_models = map(np.asarray, _mapped(stacked, identity, expression))
    valid = np.array(MASKED_LANDMARKS)[landmark_mask(MASKED_MODEL)]
    expected = _reference_shape(ARRAYS, identity, expression)[:, valid]
    np.testing.assert_allclose(over_coefficients[:, landmark_mask(MASKED_MODEL)], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(over_models[0], _reference_shape(ARRAYS, identity[0], expression[0]), atol=1e-5)
    expected = _reference_shape(other_arrays, identity[0], expression[0])
    np.testing.assert_allclose(over_models[1], expected, atol=1e-5)


def test_jit_compiles_once_per_model_layout():
    traces = []

    @jax.jit
    def evaluate(model, identity, expression):
        traces.append(model.name)  # runs only while tracing
        return shape(model, identity, expression)

    identity, expression = _coefficients(10)
    other_arrays = _arrays(11)
    other = _build(other_arrays)  # new arrays and a new Topology object, same content
    first = evaluate(MODEL, identity, expression)
    second = evaluate(other, identity, expression)
    assert len(traces) == 1
    np.testing.assert_allclose(first, _reference_shape(ARRAYS, identity, expression), atol=1e-5)
    np.testing.assert_allclose(second, _reference_shape(other_arrays, identity, expression), atol=1e-5)
    # Different static metadata (landmark layout, topology) is a different layout.
    evaluate(MASKED_MODEL, identity, expression)
    assert len(traces) == 2
    reordered = make_model(
        ARRAYS["mean"],
        ARRAYS["identity_basis"],
        ARRAYS["expression_basis"],
        triangles=TRIANGLES[::-1],
        landmark_indices=LANDMARKS,
    )
    evaluate(reordered, identity, expression)
    assert len(traces) == 3


def test_topology_hash_and_equality_are_by_content():
    a = Topology([[0, 1, 2], [2, 3, 0]])
    b = Topology(np.array([[0, 1, 2], [2, 3, 0]], dtype=np.int64))
    c = Topology([[0, 1, 2], [2, 3, 1]])
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert a != [[0, 1, 2], [2, 3, 0]]
    assert len({a, b, c}) == 2
    assert len(a) == 2 and a.triangles.dtype == np.int32
    with pytest.raises(ValueError):
        a.triangles[0, 0] = 5  # read-only: the hash cannot go stale
    assert MODEL.topology == MASKED_MODEL.topology
    assert MODEL.topology is not MASKED_MODEL.topology


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

_NAN_BASIS = ARRAYS["identity_basis"].copy()
_NAN_BASIS[2, 1, 0] = np.nan
_INF_BASIS = ARRAYS["expression_basis"].copy()
_INF_BASIS[0, 0, 1] = np.inf
_NAN_MEAN = ARRAYS["mean"].copy()
_NAN_MEAN[4, 2] = np.nan

INVALID = {
    "mean (N, 2)": ({"mean": np.zeros((N_VERTICES, 2))}, "mean"),
    "flat mean not 3N": ({"mean": np.zeros(3 * N_VERTICES + 1)}, "mean"),
    "mean NaN": ({"mean": _NAN_MEAN}, "mean"),
    "identity_basis wrong N": ({"identity_basis": np.zeros((N_VERTICES + 1, 3, N_IDENTITY))}, "identity_basis"),
    "identity_basis 2D wrong rows": (
        {"identity_basis": np.zeros((3 * N_VERTICES - 1, N_IDENTITY))},
        "identity_basis",
    ),
    "identity_basis NaN": ({"identity_basis": _NAN_BASIS}, "identity_basis"),
    "expression_basis wrong coordinates": ({"expression_basis": np.zeros((N_VERTICES, 2, 3))}, "expression_basis"),
    "expression_basis inf": ({"expression_basis": _INF_BASIS}, "expression_basis"),
    "identity_std length": ({"identity_std": np.ones(N_IDENTITY + 1)}, "identity_std"),
    "expression_std length": ({"expression_std": np.ones(N_EXPRESSION - 1)}, "expression_std"),
    "expression_std NaN": ({"expression_std": np.array([1.0, np.nan, 1.0])}, "expression_std"),
    "landmark index N": ({"landmark_indices": (0, N_VERTICES)}, "landmark_indices"),
    "landmark index -2": ({"landmark_indices": (0, -2)}, "landmark_indices"),
    "triangle index N": ({"triangles": [[0, 1, N_VERTICES]]}, "triangles"),
    "triangle index -1": ({"triangles": [[0, -1, 2]]}, "triangles"),
    "triangles (T, 4)": ({"triangles": np.zeros((3, 4), dtype=int)}, "triangles"),
    "triangles (T, 2)": ({"triangles": np.zeros((3, 2), dtype=int)}, "triangles"),
    "contour_right -1": ({"contour_right": (1, -1)}, "contour_right"),
    "contour_left N": ({"contour_left": (N_VERTICES,)}, "contour_left"),
    "expression_kind": ({"expression_kind": "linear"}, "expression_kind"),
    "expression_names count": ({"expression_names": ("a", "b")}, "expression_names"),
    "expression_lower length": ({"expression_lower": np.zeros(N_EXPRESSION + 1)}, "expression_lower"),
    "expression_lower NaN": ({"expression_lower": np.array([0.0, np.nan, 0.0])}, "expression_lower"),
    "expression_upper NaN": ({"expression_upper": np.array([np.nan, 1.0, 1.0])}, "expression_upper"),
    "lower above upper": ({"expression_lower": np.ones(3), "expression_upper": np.zeros(3)}, "expression_lower"),
}


@pytest.mark.parametrize("overrides, argument", INVALID.values(), ids=INVALID.keys())
def test_make_model_rejects_bad_input_naming_the_argument(overrides, argument):
    kwargs = {
        "mean": ARRAYS["mean"],
        "identity_basis": ARRAYS["identity_basis"],
        "expression_basis": ARRAYS["expression_basis"],
        "triangles": TRIANGLES,
        "landmark_indices": LANDMARKS,
        **overrides,
    }
    with pytest.raises(ValueError, match=argument):
        make_model(kwargs.pop("mean"), kwargs.pop("identity_basis"), kwargs.pop("expression_basis"), **kwargs)


def test_make_model_accepts_the_boundaries():
    model = make_model(
        ARRAYS["mean"],
        ARRAYS["identity_basis"],
        np.zeros((N_VERTICES, 3, 0)),
        triangles=np.zeros((0, 3), dtype=int),
        landmark_indices=(0, N_VERTICES - 1, -1),
        contour_right=(0, N_VERTICES - 1),
    )
    assert model.n_expression == 0 and len(model.topology) == 0
    assert np.asarray(shape(model, np.zeros(N_IDENTITY), np.zeros(0))).shape == (N_VERTICES, 3)


@pytest.mark.parametrize(
    "identity_shape, expression_shape, argument",
    [
        ((N_IDENTITY + 1,), (N_EXPRESSION,), "identity"),
        ((), (N_EXPRESSION,), "identity"),
        ((N_IDENTITY,), (N_EXPRESSION - 1,), "expression"),
        ((2, N_IDENTITY), (2, N_EXPRESSION, 1), "expression"),
    ],
)
def test_shape_rejects_wrong_trailing_dimension(identity_shape, expression_shape, argument):
    identity, expression = np.zeros(identity_shape), np.zeros(expression_shape)
    for function in (shape, landmarks, jax.jit(shape)):
        with pytest.raises(ValueError, match=f"^{argument}: expected trailing dimension"):
            function(MODEL, identity, expression)


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------

BLENDSHAPE_LOWER = np.array([0.0, -1.0, -np.inf], np.float32)
BLENDSHAPE_UPPER = np.array([1.0, 2.0, -2.0], np.float32)
BLENDSHAPE_MODEL = _build(
    ARRAYS, expression_kind="blendshape", expression_lower=BLENDSHAPE_LOWER, expression_upper=BLENDSHAPE_UPPER
)


COUNT = 20000


@jax.jit
def _draw(key, identity_scale=1.0, expression_scale=1.0):
    """``COUNT`` samples of the PCA and of the blendshape model (one compilation)."""
    scales = {"identity_scale": identity_scale, "expression_scale": expression_scale}
    return sample(MODEL, key, (COUNT,), **scales), sample(BLENDSHAPE_MODEL, key, (COUNT,), **scales)


@pytest.mark.parametrize("batch", [(), (1,), (3, 2)], ids=str)
def test_sample_shapes(batch):
    for model in (MODEL, BLENDSHAPE_MODEL):
        # Shapes only: tracing is enough, and it avoids compiling the PRNG per shape.
        identity, expression = jax.eval_shape(lambda key: sample(model, key, batch), jax.random.key(0))
        assert identity.shape == (*batch, N_IDENTITY) and expression.shape == (*batch, N_EXPRESSION)
        assert identity.dtype == expression.dtype == jnp.float32


def test_sample_is_deterministic_per_key():
    first = jax.tree.map(np.asarray, _draw(jax.random.key(0)))
    again = jax.tree.map(np.asarray, _draw(jax.random.key(0)))
    other = jax.tree.map(np.asarray, _draw(jax.random.key(1)))
    for model_draws, model_again, model_other in zip(first, again, other):
        for draws, draws_again, draws_other in zip(model_draws, model_again, model_other):
            np.testing.assert_array_equal(draws, draws_again)
            assert np.mean(draws == draws_other) < 1e-3
    # Identity and expression use different streams of the key.
    identity, expression = first[0]
    assert np.mean(identity[:, :N_EXPRESSION] == expression) < 1e-3


def test_blendshape_samples_respect_and_fill_the_bounds():
    _, (_, expression) = jax.tree.map(np.asarray, _draw(jax.random.key(2)))
    # An unbounded lower side sits one unit below the upper bound.
    lower = np.array([0.0, -1.0, -3.0])
    upper = BLENDSHAPE_UPPER
    assert np.all(expression >= lower) and np.all(expression <= upper)
    # Uniform over the whole range: extremes near the bounds, mean in the middle
    # (per component, relative to its span).
    span = upper - lower
    np.testing.assert_allclose((expression.min(axis=0) - lower) / span, 0.0, atol=0.01)
    np.testing.assert_allclose((expression.max(axis=0) - lower) / span, 1.0, atol=0.01)
    np.testing.assert_allclose((expression.mean(axis=0) - lower) / span, 0.5, atol=0.02)
    # expression_scale shrinks the range from the lower bound.
    _, (_, half) = jax.tree.map(np.asarray, _draw(jax.random.key(3), 1.0, 0.5))
    assert np.all(half >= lower) and np.all(half <= lower + 0.5 * span)
    np.testing.assert_allclose((half.max(axis=0) - lower) / span, 0.5, atol=0.01)


def test_default_blendshape_bounds_are_zero_to_one():
    model = _build(ARRAYS, expression_kind="blendshape")
    np.testing.assert_array_equal(model.expression_lower, 0.0)
    np.testing.assert_array_equal(model.expression_upper, 1.0)
    np.testing.assert_array_equal(MODEL.expression_lower, -np.inf)
    np.testing.assert_array_equal(MODEL.expression_upper, np.inf)


def test_pca_samples_are_standard_normal():
    (identity, expression), _ = jax.tree.map(np.asarray, _draw(jax.random.key(5)))
    both = np.concatenate([identity, expression], axis=1)
    # Standard errors: mean 1/√n ≈ 0.007, variance √(2/n) ≈ 0.01; allow 5σ.
    np.testing.assert_allclose(both.mean(axis=0), 0.0, atol=0.04)
    covariance = np.cov(both, rowvar=False)
    np.testing.assert_allclose(covariance, np.eye(N_IDENTITY + N_EXPRESSION), atol=0.05)
    (scaled, _), _ = jax.tree.map(np.asarray, _draw(jax.random.key(6), 2.0, 1.0))
    np.testing.assert_allclose(scaled.var(axis=0), 4.0, rtol=0.05)


def test_non_finite_coefficients_are_rejected_eagerly():
    import jax.numpy as jnp
    from morphable.model import make_model, shape, landmarks

    m = make_model(np.zeros((3, 3)), np.ones((3, 3, 2)), np.ones((3, 3, 1)),
                   triangles=[[0, 1, 2]], landmark_indices=[0])
    with pytest.raises(ValueError, match="identity: contains NaN"):
        shape(m, jnp.array([np.nan, 0.0]), jnp.zeros(1))
    with pytest.raises(ValueError, match="expression: contains NaN"):
        landmarks(m, jnp.zeros(2), jnp.array([np.inf]))
