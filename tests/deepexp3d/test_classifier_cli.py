"""``deepexp3d classifier train|evaluate``: wiring, outputs and errors.

The feature extraction is replaced by a fixed vector per image file (the
features and the protocol have their own tests in ``tests/classifier``); the
models are small native ``.npz`` files passed with ``--model``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import classifier.evaluation
from deepexp3d.cli import app
from morphable.io import save_model
from tests.classifier.test_evaluation import emfacs_dataset, fake_extractor, toy_model, write_dataset

OPTIONS = ["--kernel", "linear", "--trials", "2", "--folds", "3", "--min-per-class", "8", "--no-progress", "--no-cache"]


@pytest.fixture()
def dataset(tmp_path, monkeypatch):
    """labels.csv with 3 classes × 12 images (+ 3 of a rare class), two model files, injected features."""
    features, labels, subjects = emfacs_dataset(12)
    features = np.concatenate([features, features[:3]])
    labels = np.concatenate([labels, ["fear"] * 3])
    subjects = np.concatenate([subjects, ["r1", "r2", "r3"]])
    csv_path, table = write_dataset(tmp_path / "data", features, labels, subjects, no_face=(0,))
    model_path = save_model(toy_model(), tmp_path / "toy.npz")
    other_path = save_model(toy_model(seed=1), tmp_path / "other.npz")

    def extract(paths, model, **options):
        return fake_extractor(table, model)(paths, model, **options)

    monkeypatch.setattr(classifier.evaluation, "expression_features", extract)
    return csv_path, model_path, other_path, labels


def test_train_then_evaluate(dataset, tmp_path):
    csv_path, model_path, _, labels = dataset
    out = tmp_path / "emotion"
    result = CliRunner().invoke(
        app, ["classifier", "train", str(csv_path), "--out", str(out), "--model", str(model_path), *OPTIONS]
    )
    assert result.exit_code == 0, result.output
    assert "excluded class 'fear' (3 images): fewer than 8 images with a face" in result.output
    assert "1 without" in result.output and "3-fold subject-disjoint stratified CV" in result.output
    assert (tmp_path / "emotion.npz").is_file() and (tmp_path / "emotion.json").is_file()
    saved = json.loads((tmp_path / "emotion.json").read_text())
    assert saved["class_names"] == ["anger", "happy", "sad"] and saved["basis_id"].startswith("toy:n_e=53:")
    report = json.loads((tmp_path / "emotion.report.json").read_text())
    assert report["training_images"] == len(labels) - 3 - 1

    result = CliRunner().invoke(
        app,
        ["classifier", "evaluate", str(csv_path), "--out", str(tmp_path / "eval"), "--classifier", str(out),
         "--model", str(model_path), "--no-progress", "--no-cache"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["mode"] == "classifier" and report["excluded_classes"] == {"fear": 3}
    assert "EMFACS prior: accuracy" in result.output and "chance: majority" in result.output
    assert (tmp_path / "eval" / "confusion.png").is_file()


def test_evaluate_cross_validation_and_prior(dataset, tmp_path):
    csv_path, model_path, _, labels = dataset
    result = CliRunner().invoke(
        app, ["classifier", "evaluate", str(csv_path), "--out", str(tmp_path / "cv"), "--model", str(model_path),
              *OPTIONS],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "cv" / "report.json").read_text())
    assert report["mode"] == "cross-validation" and report["excluded_classes"] == {"fear": 3}
    assert np.asarray(report["classifier"]["confusion"]).sum() == len(labels) - 3 - 1
    assert "CV accuracy" in result.output

    result = CliRunner().invoke(
        app, ["classifier", "evaluate", str(csv_path), "--out", str(tmp_path / "prior"), "--prior",
              "--model", str(model_path), "--min-per-class", "3", "--no-progress", "--no-cache"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "prior" / "report.json").read_text())
    assert report["mode"] == "prior" and report["prior"]["classes"] == ["anger", "fear", "happy", "sad"]


def test_a_classifier_from_another_basis_is_refused(dataset, tmp_path):
    csv_path, model_path, other_path, _ = dataset
    out = tmp_path / "emotion"
    trained = CliRunner().invoke(
        app, ["classifier", "train", str(csv_path), "--out", str(out), "--model", str(model_path), *OPTIONS]
    )
    assert trained.exit_code == 0, trained.output
    result = CliRunner().invoke(
        app, ["classifier", "evaluate", str(csv_path), "--out", str(tmp_path / "eval"), "--classifier", str(out),
              "--model", str(other_path), "--no-progress", "--no-cache"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "error:" in result.output and "expression basis" in result.output and "retrain" in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("file,subject\nimages/im_0000.jpg,s1\n", "no 'label' column"),
        ("file,label\nimages/im_0000.jpg,happy\nimages/gone.jpg,sad\n", "1 of 2 listed images not found"),
    ],
)
def test_bad_csv_exits_with_a_clear_message(dataset, tmp_path, content, message):
    csv_path, model_path, _, _ = dataset
    bad = csv_path.parent / "bad.csv"
    bad.write_text(content)
    commands = (["train", str(bad), "--out", str(tmp_path / "c")], ["evaluate", str(bad), "--out", str(tmp_path / "e")])
    for command in commands:
        result = CliRunner().invoke(app, ["classifier", *command, "--model", str(model_path), "--no-cache"])
        assert result.exit_code == 1
        assert "error:" in result.output and message in result.output and "bad.csv" in result.output
        assert "Traceback" not in result.output


def test_bad_options_exit_1(dataset, tmp_path):
    csv_path, model_path, _, _ = dataset
    both = CliRunner().invoke(
        app, ["classifier", "evaluate", str(csv_path), "--out", str(tmp_path / "e"), "--prior", "--classifier", "x"]
    )
    assert both.exit_code == 1 and "either --classifier or --prior" in both.output
    kernel = CliRunner().invoke(
        app, ["classifier", "train", str(csv_path), "--out", str(tmp_path / "c"), "--kernel", "poly",
              "--model", str(model_path)],
    )  # fmt: skip
    assert kernel.exit_code == 1 and "kernel: expected 'linear' or 'rbf'" in kernel.output
    missing = CliRunner().invoke(
        app, ["classifier", "evaluate", str(csv_path), "--out", str(tmp_path / "e"), "--classifier",
              str(tmp_path / "nope"), "--model", str(model_path)],
    )  # fmt: skip
    assert missing.exit_code == 1 and "classifier file not found" in missing.output


def test_help_lists_the_commands():
    result = CliRunner().invoke(app, ["classifier", "--help"])
    assert result.exit_code == 0 and "train" in result.output and "evaluate" in result.output
