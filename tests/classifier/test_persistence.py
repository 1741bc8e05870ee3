"""Save/load round trips (every learner kind) and the expression-basis guard."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from classifier.ecoc import ECOCClassifier, fit, predict, predict_proba
from classifier.persistence import expression_basis_id, load_classifier, save_classifier
from classifier.svm import KernelSVMs, LinearSVMs, NystroemSVMs, SVMConfig
from morphable import make_model


@pytest.fixture(scope="module")
def data():
    # Same shapes as test_ecoc's blobs, so a shared session reuses compiled code.
    rng = np.random.default_rng(0)
    centres = [[0, 0, 0, 0], [3, 0, 0, 0], [0, 3, 0, 0]]
    x = np.concatenate([rng.normal(c, 1.0, (40, 4)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.array(["neutral", "happy", "sad"]), 40)


LINEAR = ECOCClassifier(svm=SVMConfig(kernel="linear"), calibration_folds=0)


@pytest.mark.parametrize(
    "config, kind",
    [
        (LINEAR, LinearSVMs),
        (ECOCClassifier(), KernelSVMs),
        (ECOCClassifier(svm=SVMConfig(approximation="nystroem", n_components=40), coding="one_vs_one"), NystroemSVMs),
    ],
    ids=["linear", "rbf-exact", "rbf-nystroem-one-vs-one"],
)
def test_round_trip_gives_identical_predictions(tmp_path, data, config, kind):
    x, y = data
    names = ["neutral", "happy", "sad"]
    trained = fit(config, x, y, class_names=names, basis_id="toy:n_e=4:abc", key=jax.random.key(1))
    assert isinstance(trained.learners, kind)
    # Overlapping blobs (Bayes accuracy ~0.93): every coding trains properly,
    # one-vs-one included (its learners ignore the third class).
    assert np.mean(np.asarray(trained.class_names)[predict(trained, x)] == y) > 0.85
    npz_path, json_path = save_classifier(tmp_path / "emotion", trained)
    loaded = load_classifier(tmp_path / "emotion.npz", basis_id="toy:n_e=4:abc")

    assert loaded.class_names == tuple(names) and loaded.basis_id == "toy:n_e=4:abc"
    assert loaded.config.coding == config.coding and loaded.config.svm.kernel == config.svm.kernel
    assert loaded.config.svm.C == pytest.approx(float(trained.config.svm.C))
    np.testing.assert_array_equal(np.asarray(loaded.feature_mean), np.asarray(trained.feature_mean))
    np.testing.assert_array_equal(np.asarray(loaded.coding), np.asarray(trained.coding))
    assert float(loaded.temperature) == float(trained.temperature)
    np.testing.assert_array_equal(predict(loaded, x), predict(trained, x))
    np.testing.assert_array_equal(predict_proba(loaded, x), predict_proba(trained, x))
    metadata = json.loads(json_path.read_text())
    assert metadata["class_names"] == names and metadata["n_features"] == 4
    assert npz_path.suffix == ".npz"


def test_basis_mismatch_and_corruption_are_refused(tmp_path, data):
    x, y = data
    trained = fit(LINEAR, x, y, basis_id="ict:n_e=4:aaa")
    save_classifier(tmp_path / "c", trained)
    with pytest.raises(ValueError, match="expression basis 'ict:n_e=4:aaa'"):
        load_classifier(tmp_path / "c", basis_id="ict:n_e=4:bbb")
    loaded = load_classifier(tmp_path / "c")
    with pytest.raises(ValueError, match="trained on 'ict:n_e=4:aaa'"):
        predict(loaded, x, basis_id="ict:n_e=4:bbb")
    with pytest.raises(ValueError, match="expects 4 features"):
        predict(loaded, x[:, :3])

    npz = tmp_path / "c.npz"
    npz.write_bytes(npz.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="checksum"):
        load_classifier(tmp_path / "c")
    with pytest.raises(FileNotFoundError):
        load_classifier(tmp_path / "missing")


def _toy_model(basis, names, name="toy"):
    return make_model(
        np.zeros((4, 3)),
        np.zeros((4, 3, 1)),
        basis,
        triangles=[[0, 1, 2], [1, 2, 3]],
        landmark_indices=[0, 3],
        expression_names=names,
        expression_kind="blendshape",
        name=name,
    )


def test_expression_basis_id_tells_bases_apart():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(4, 3, 2))
    reference = expression_basis_id(_toy_model(basis, ("a", "b")))
    assert reference.startswith("toy:n_e=2:")
    assert expression_basis_id(_toy_model(basis.copy(), ("a", "b"))) == reference
    assert expression_basis_id(_toy_model(basis + 1e-3, ("a", "b"))) != reference
    assert expression_basis_id(_toy_model(basis, ("b", "a"))) != reference
    assert expression_basis_id(_toy_model(basis, ("a", "b"), name="other")) != reference
