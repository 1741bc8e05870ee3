"""The example scripts run end to end on short slices of the shared clips and write sane outputs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _needs_dlib():
    pytest.importorskip("dlib", reason="the example detects landmarks with dlib: pip install 'deepexp3d[landmarks]'")
    if importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("the dlib 68-point model (face_recognition_models) is not installed")


def _video(shared_data: Path, name: str) -> Path:
    path = shared_data / "videos" / name
    if not path.is_file():
        pytest.skip(f"clip not found: {path}")
    return path


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _image_shape(path: Path) -> tuple[int, ...]:
    import matplotlib.image

    pixels = matplotlib.image.imread(path)
    assert pixels.std() > 0.01, f"{path.name} is blank"
    return pixels.shape


def test_fit_video_script_rejects_bad_arguments_with_a_message(tmp_path, capsys):
    example = _load_example("fit_video")
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--stride", "0", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "--stride: must be at least 1" in capsys.readouterr().err
    missing = tmp_path / "missing.mp4"
    with pytest.raises(SystemExit) as exit_info:
        example.main([str(missing), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1 and f"video not found: {missing}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing is written for a failed run


@pytest.mark.slow
def test_fit_video_script_on_a_slice_of_the_default_clip(tmp_path, shared_data, ict_cache):
    _needs_dlib()
    _video(shared_data, "WolfgangLanger_Pexels.mp4")
    out = tmp_path / "out"
    environment = {**os.environ, "DEEPEXP3D_DATA": str(shared_data), "DEEPEXP3D_CACHE": str(ict_cache)}
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "fit_video.py"), "--max-frames", "40", "--stride", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    for stage in ("load model", "detect landmarks", "fit", "write outputs"):
        assert stage in completed.stdout

    expressions_shape = _image_shape(out / "expressions.png")
    rmse_shape = _image_shape(out / "rmse.png")
    assert expressions_shape[0] > 600 and expressions_shape[1] > 800  # eight stacked panels
    assert rmse_shape[1] > 800

    arrays = np.load(out / "fit.npz")
    np.testing.assert_array_equal(arrays["frame_indices"], np.arange(0, 80, 2))
    np.testing.assert_allclose(arrays["times"], arrays["frame_indices"] / 23.976, rtol=1e-3)
    valid = arrays["frame_valid"]
    assert valid.all()  # dlib finds her face in every frame of this clip
    expression, std = arrays["expression"], arrays["expression_std"]
    assert expression.shape == std.shape == (40, 53)
    assert expression.min() >= -1e-6 and expression.max() <= 1 + 1e-6  # ICT blendshape bounds
    assert np.all(np.isfinite(std)) and np.all(std > 0)
    rmse = arrays["landmark_rmse"]
    assert np.all((rmse > 0.5) & (rmse < 10.0))  # dlib on a face ~130 px between the eye corners

    # The saved parameters reproduce the saved error: project the fitted model landmarks with the
    # saved cameras and compare with the saved detected landmarks.
    import morphable
    from morphable.io import load_ict

    model = load_ict(region="face", cache_dir=ict_cache)
    camera = morphable.WeakPerspectiveCamera(
        rotation=arrays["rotation"], scale=arrays["scale"], translation=arrays["translation"]
    )
    points = morphable.landmarks(model, arrays["identity"], expression)
    residual = np.asarray(morphable.project(camera, points)) - arrays["landmarks"]
    np.testing.assert_allclose(np.sqrt(np.mean(np.sum(residual**2, -1), -1)), rmse, rtol=2e-3, atol=1e-3)

    summary = json.loads((out / "fit.json").read_text())
    assert summary["frames_processed"] == 40 and summary["frames_with_face"] == 40 and summary["stride"] == 2
    assert summary["fit"]["valid"] and summary["fit"]["landmark_rmse_px_median"] == pytest.approx(np.median(rmse))
    strongest = summary["strongest_expressions"]
    names = list(model.expression_names)
    assert len(strongest) == 8
    root_mean_square = np.sqrt(np.mean(expression**2, axis=0))
    expected = [names[k] for k in np.argsort(-root_mean_square, kind="stable")[:8]]
    assert list(strongest) == expected
    for name, entry in strongest.items():
        assert entry["rms"] == pytest.approx(root_mean_square[names.index(name)], rel=1e-5)
    assert set(summary["seconds"]) == {"load model", "detect landmarks", "fit (incl. compilation)", "write outputs"}


@pytest.mark.slow
def test_fit_video_keeps_a_video_whose_face_goes_away(tmp_path, shared_data, ict_cache, monkeypatch):
    """The face is in frames 0–71 only: the fit uses those, the rest are gaps, the run does not fail."""
    _needs_dlib()
    video = _video(shared_data, "face_then_noface.mp4")
    monkeypatch.setenv("DEEPEXP3D_CACHE", str(ict_cache))
    example = _load_example("fit_video")
    summary = example.run(video, tmp_path, stride=8, max_frames=20, log=lambda *args: None)
    arrays = np.load(tmp_path / "fit.npz")
    indices, valid = arrays["frame_indices"], arrays["frame_valid"]
    np.testing.assert_array_equal(indices, np.arange(0, 160, 8))
    # dlib finds the face up to frame 71 and nothing in the animated title after it: 11 lost
    # frames in a row, which the annotation pipeline's tracker would drop the video for.
    assert valid[indices < 64].all() and not valid[indices >= 72].any()
    assert summary["frames_with_face"] == int(valid.sum()) and summary["fit"]["valid"]
    assert np.all(arrays["landmark_rmse"][valid] < 10.0)
    assert (tmp_path / "expressions.png").is_file() and (tmp_path / "rmse.png").is_file()
