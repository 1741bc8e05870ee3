"""plot_expression_timeline: which coefficients it draws, where the gaps are, the bands."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from morphable.plot import plot_expression_timeline, strongest_coefficients

NAMES = ["jawOpen", "eyeBlink_L", "mouthSmile_L", "browDown_R", "cheekPuff_L"]


@pytest.fixture
def timeline():
    """40 frames at 25 fps of 5 coefficients with known strengths; frames 10–14 and 30 have no face."""
    rng = np.random.default_rng(0)
    times = np.arange(40) / 25.0
    scales = np.array([0.05, 0.6, 0.3, 0.01, 0.2])  # RMS ranking: 1, 2, 4, 0, 3
    expression = rng.normal(size=(40, 5)) * scales
    std = np.full((40, 5), 0.02)
    valid = np.ones(40, bool)
    valid[10:15] = False
    valid[30] = False
    yield times, expression, std, valid
    plt.close("all")


def test_draws_the_strongest_coefficients_in_order(timeline):
    times, expression, std, valid = timeline
    ax = plot_expression_timeline(expression, NAMES, times=times, std=std, valid=valid, top=3)
    assert [line.get_label() for line in ax.get_lines()] == ["eyeBlink_L", "mouthSmile_L", "cheekPuff_L"]
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["eyeBlink_L", "mouthSmile_L", "cheekPuff_L"]
    # One ±std band per line.
    assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 3


def test_ranking_ignores_values_on_frames_without_a_face(timeline):
    times, expression, std, valid = timeline
    expression = expression.copy()
    expression[~valid, 3] = 100.0  # huge, but only where there is no face
    ax = plot_expression_timeline(expression, NAMES, times=times, valid=valid, top=1)
    assert [line.get_label() for line in ax.get_lines()] == ["eyeBlink_L"]


def test_x_range_and_values_follow_the_inputs(timeline):
    times, expression, std, valid = timeline
    ax = plot_expression_timeline(expression, NAMES, times=times, valid=valid, indices=[4, 0])
    assert ax.get_xlim() == pytest.approx((0.0, 39 / 25.0))
    cheek, jaw = ax.get_lines()
    assert (cheek.get_label(), jaw.get_label()) == ("cheekPuff_L", "jawOpen")
    np.testing.assert_array_equal(cheek.get_xdata(), times)
    np.testing.assert_allclose(cheek.get_ydata()[valid], expression[valid, 4])


def test_frames_without_a_face_are_gaps(timeline):
    times, expression, std, valid = timeline
    ax = plot_expression_timeline(expression, NAMES, times=times, std=std, valid=valid, top=2)
    for line in ax.get_lines():
        np.testing.assert_array_equal(np.isnan(line.get_ydata()), ~valid)
    # The bands leave the same frames out: no band vertex lies strictly inside a gap.
    for band in (c for c in ax.collections if isinstance(c, PolyCollection)):
        xs = np.concatenate([path.vertices[:, 0] for path in band.get_paths()])
        assert not np.any((xs > times[9] + 1e-9) & (xs < times[15] - 1e-9))
    # Two runs of missing frames are shaded: 10–14 and 30, each to half a frame either side.
    spans = sorted(round(patch.get_x(), 6) for patch in ax.patches)
    assert spans == pytest.approx([9.5 / 25.0, 29.5 / 25.0])


def test_nan_coefficients_stay_gaps_without_a_valid_mask():
    expression = np.linspace(0.0, 1.0, 12)[:, None].repeat(2, axis=1)
    expression[4:6, 0] = np.nan
    ax = plot_expression_timeline(expression, ["a", "b"], top=None)
    assert len(ax.get_lines()) == 2
    assert np.isnan(ax.get_lines()[0].get_ydata()).tolist() == [4 <= t < 6 for t in range(12)]
    assert not ax.patches  # nothing shaded: every frame is valid
    plt.close("all")


def test_strongest_coefficients_rank_by_root_mean_square_over_valid_frames():
    expression = np.array([[0.5, 0.0, 0.3], [-0.5, 0.0, 0.3], [0.0, 9.0, 0.3]])
    valid = np.array([True, True, False])
    # Over frames 0–1 the RMS are 0.5, 0 and 0.3 (column 0's mean is 0: the sign must not cancel).
    assert strongest_coefficients(expression, valid).tolist() == [0, 2, 1]
    assert strongest_coefficients(expression, valid, top=1).tolist() == [0]
    assert strongest_coefficients(expression).tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match="valid"):
        strongest_coefficients(expression, np.ones(3))


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"expression": np.zeros(5)}, "expression"),
        ({"names": ["a"]}, "names"),
        ({"times": np.arange(4.0)}, "times"),
        ({"times": np.zeros(6)}, "times"),
        ({"std": np.zeros((6, 2))}, "std"),
        ({"std": -np.ones((6, 3))}, "std"),
        ({"valid": np.ones(6)}, "valid"),
        ({"indices": [3]}, "indices"),
    ],
)
def test_bad_arguments_are_named(kwargs, argument):
    arguments = {"expression": np.zeros((6, 3)), "names": ["a", "b", "c"], **kwargs}
    with pytest.raises(ValueError, match=argument):
        plot_expression_timeline(arguments.pop("expression"), arguments.pop("names"), **arguments)
    plt.close("all")
