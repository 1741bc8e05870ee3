"""Emotion evaluation: class selection, subject-disjoint CV, the prior, reports, train/save/load from images.

Image-level functions run with an injected feature function (a fixed expression
vector per file), so these tests exercise the protocol, not the fitter.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from classifier.emfacs import EMOTIONS, sample_emfacs
from classifier.evaluation import (
    EvaluationConfig,
    chance_levels,
    classification_scores,
    cross_validated_evaluation,
    evaluate_images,
    prior_evaluation,
    select_classes,
    train_from_images,
)
from classifier.features import ExpressionFeatures, LabelledImages
from classifier.persistence import expression_basis_id, load_classifier
from morphable.model import make_model
from tests.classifier.test_emfacs import ICT_NAMES

# EMFACS class → the emotions-wild label of the same emotion.
DATASET_NAME = {"angry": "anger", "fearful": "fear", "surprised": "surprise", "disgusted": "disgust"}


def toy_model(seed: int = 0, name: str = "toy"):
    """A 80-vertex blendshape model with the 53 ICT expression names (68 landmark vertices)."""
    rng = np.random.default_rng(seed)
    return make_model(
        rng.normal(size=(80, 3)) * 5.0,
        rng.normal(size=(80, 3, 4)),
        rng.normal(size=(80, 3, 53)) * 0.3,
        triangles=[[0, 1, 2]],
        landmark_indices=np.arange(68),
        expression_names=ICT_NAMES,
        expression_kind="blendshape",
        name=name,
    )


def emfacs_dataset(per_class: int, classes=("happy", "sad", "angry"), seed: int = 0):
    """EMFACS-like expression vectors with data-set label names and subjects of 1–3 images."""
    features, labels = sample_emfacs(ICT_NAMES, per_class, jax.random.key(seed))
    names = np.array([DATASET_NAME.get(e, e) for e in EMOTIONS])[labels]
    keep = np.isin(np.asarray(EMOTIONS)[labels], classes)
    features, names = features[keep], names[keep]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    features, names = features[order], names[order]
    subjects = np.repeat(np.arange(len(names)), rng.integers(1, 4, len(names)))[: len(names)].astype(str)
    return features, names, subjects


def fake_extractor(table: dict[str, np.ndarray], model, calls: list | None = None):
    """A feature function with the signature of ``expression_features``; NaN rows mean no face."""

    def extract(paths, extract_model, *, detector=None, cache=None, progress=True):
        if calls is not None:
            calls.append(len(paths))
        rows = np.stack([table[Path(p).name] for p in paths]).astype(np.float32)
        found = np.all(np.isfinite(rows), axis=1)
        n = len(paths)
        return ExpressionFeatures(
            features=rows,
            found=found,
            detected=found,
            score=np.where(found, 1.0, np.nan).astype(np.float32),
            rmse_normalised=np.where(found, 0.02, np.nan).astype(np.float32),
            cached=np.zeros(n, bool),
            paths=tuple(Path(p) for p in paths),
            basis_id=expression_basis_id(extract_model),
            expression_names=tuple(extract_model.expression_names),
        )

    return extract


def write_dataset(folder: Path, features, labels, subjects=None, *, no_face=()) -> tuple[Path, dict]:
    """Empty image files + labels.csv (``file`` column as emotions-wild); returns the CSV and the feature table."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    table, lines = {}, ["file,label" + (",subject" if subjects is not None else "")]
    for i, (row, label) in enumerate(zip(features, labels)):
        name = f"im_{i:04d}.jpg"
        (folder / "images" / name).write_bytes(b"")
        table[name] = np.full_like(row, np.nan) if i in no_face else row
        lines.append(f"images/{name},{label}" + (f",{subjects[i]}" if subjects is not None else ""))
    csv_path = folder / "labels.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path, table


# --- array level --------------------------------------------------------------------------------


def test_select_classes():
    labels = np.array(["a"] * 12 + ["b"] * 10 + ["c"] * 4 + ["d"] * 11)
    usable = np.ones(labels.size, bool)
    usable[:3] = False  # "a" keeps 9 usable images
    selection = select_classes(labels, usable, min_per_class=10)
    assert selection.class_names == ("b", "d")
    assert selection.counts == {"b": 10, "d": 11}
    assert selection.excluded == {"a": 9, "c": 4}
    np.testing.assert_array_equal(selection.rows, np.isin(labels, ["b", "d"]))
    with pytest.raises(ValueError, match="fewer than 2 classes"):
        select_classes(labels, usable, min_per_class=11)


def test_chance_and_scores_against_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix

    rng = np.random.default_rng(0)
    names = ["anger", "happy", "sad"]
    truth = rng.choice(names, 200, p=[0.5, 0.3, 0.2])
    predicted = np.where(rng.random(200) < 0.6, truth, rng.choice(names, 200))
    scores = classification_scores(truth, predicted, names)
    np.testing.assert_array_equal(scores.confusion, confusion_matrix(truth, predicted, labels=names))
    assert scores.accuracy == pytest.approx(np.mean(truth == predicted))
    assert scores.balanced_accuracy == pytest.approx(balanced_accuracy_score(truth, predicted))
    chance = chance_levels(truth)
    assert chance.majority_class == "anger"
    assert chance.majority_rate == pytest.approx(np.mean(truth == "anger"))
    assert chance.uniform == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="not among class_names"):
        classification_scores(truth, predicted, names[:2])


def test_cross_validation_is_subject_disjoint_and_consistent():
    features, labels, subjects = emfacs_dataset(30)
    config = EvaluationConfig(kernel="linear", n_trials=3, n_folds=5, min_per_class=10)
    result = cross_validated_evaluation(features, labels, subjects=subjects, config=config)
    assert result.subject_grouped
    # No subject has images in two folds.
    for subject in np.unique(subjects):
        assert np.unique(result.folds[subjects == subject]).size == 1
    assert np.unique(result.folds).size == 5
    # Confusion rows sum to the class counts; the diagonal is the out-of-fold hits.
    names, counts = np.unique(labels, return_counts=True)
    assert result.scores.class_names == tuple(names)
    np.testing.assert_array_equal(result.scores.confusion.sum(axis=1), counts)
    assert np.trace(result.scores.confusion) == np.sum(result.predictions == labels)
    assert result.accuracy_mean == pytest.approx(np.mean(result.fold_accuracy))
    for f in range(5):
        in_fold = result.folds == f
        assert result.fold_accuracy[f] == pytest.approx(np.mean(result.predictions[in_fold] == labels[in_fold]))
    # Separable EMFACS-like data: far above chance (1/3).
    assert result.scores.accuracy > 0.9
    assert set(result.best_params) == {"C"} and len(result.trials) == 3


def test_cross_validation_of_shuffled_labels_stays_near_chance():
    features, labels, _ = emfacs_dataset(30)
    shuffled = np.random.default_rng(1).permutation(labels)
    config = EvaluationConfig(kernel="linear", n_trials=2, n_folds=5)
    result = cross_validated_evaluation(features, shuffled, config=config)
    assert not result.subject_grouped
    assert result.scores.accuracy < 0.6  # chance 1/3; a leak between folds would show here


def test_prior_on_emfacs_samples_with_dataset_names():
    features, labels, _ = emfacs_dataset(40, classes=EMOTIONS)
    # A class the prior does not know is left out of its score, not counted wrong.
    extra = np.random.default_rng(0).uniform(0, 0.2, (10, 53)).astype(np.float32)
    features = np.concatenate([features, extra])
    labels = np.concatenate([labels, ["contempt"] * 10])
    prior = prior_evaluation(features, labels, ICT_NAMES)
    assert prior.unmapped_classes == ("contempt",)
    assert prior.rows.sum() == 280 and not prior.rows[-10:].any()
    assert dict(zip(prior.scores.class_names, prior.emfacs_classes))["anger"] == "angry"
    np.testing.assert_array_equal(prior.scores.confusion.sum(axis=1), [40] * 7)
    assert prior.scores.accuracy > 0.9  # its own sample distribution; chance 1/7


def test_prior_is_restricted_to_the_evaluated_classes():
    features, labels, _ = emfacs_dataset(30, classes=("happy", "sad"))
    prior = prior_evaluation(features, labels, ICT_NAMES)
    assert set(prior.predictions.tolist()) <= {"happy", "sad"}
    assert prior.scores.confusion.shape == (2, 2)
    with pytest.raises(ValueError, match="ARKit"):
        prior_evaluation(features, labels, [f"pca{k}" for k in range(53)])


# --- image level, injected features ---------------------------------------------------------------


def test_train_saves_a_classifier_that_refuses_another_basis(tmp_path):
    features, labels, subjects = emfacs_dataset(12)
    # Two images of a rare class, and three images without a face.
    features = np.concatenate([features, features[:2]])
    labels = np.concatenate([labels, ["fear", "fear"]])
    subjects = np.concatenate([subjects, ["rare1", "rare2"]])
    csv_path, table = write_dataset(tmp_path / "data", features, labels, subjects, no_face=(0, 1, 2))
    model = toy_model()
    config = EvaluationConfig(kernel="linear", n_trials=2, n_folds=4, min_per_class=5)
    trained, report = train_from_images(
        csv_path, model, tmp_path / "out" / "emotion", config=config, extract_features=fake_extractor(table, model)
    )
    assert trained.class_names == ("anger", "happy", "sad")
    assert report["excluded_classes"] == {"fear": 2}
    assert report["images_without_face"] == 3 and len(report["without_face"]) == 3
    assert report["training_images"] == len(labels) - 2 - 3
    assert (tmp_path / "out" / "emotion.report.json").is_file()
    assert (tmp_path / "out" / "emotion.confusion.png").stat().st_size > 0

    basis = expression_basis_id(model)
    loaded = load_classifier(tmp_path / "out" / "emotion", basis_id=basis)
    assert loaded.class_names == trained.class_names and loaded.basis_id == basis
    other = expression_basis_id(toy_model(seed=1))
    with pytest.raises(ValueError, match="expression basis"):
        load_classifier(tmp_path / "out" / "emotion", basis_id=other)
    # A trained classifier passed directly is checked against the model too.
    other_table = dict(table)
    with pytest.raises(ValueError, match="expression basis"):
        evaluate_images(
            csv_path, toy_model(seed=1), tmp_path / "eval", classifier=loaded,
            extract_features=fake_extractor(other_table, toy_model(seed=1)),
        )  # fmt: skip


def test_evaluate_images_reports_cv_prior_and_chance(tmp_path):
    features, labels, subjects = emfacs_dataset(12)
    labels = labels.copy()
    csv_path, table = write_dataset(tmp_path / "data", features, labels, subjects, no_face=(5,))
    model = toy_model()
    calls = []
    config = EvaluationConfig(kernel="linear", n_trials=2, n_folds=4, min_per_class=5)
    report = evaluate_images(
        csv_path, model, tmp_path / "eval", config=config, extract_features=fake_extractor(table, model, calls)
    )
    assert calls == [len(labels)]
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert report["mode"] == "cross-validation"
    assert report["images_without_face"] == 1 and report["without_face"][0].endswith("im_0005.jpg")
    assert report["evaluated_images"] == len(labels) - 1
    cv = report["classifier"]
    assert cv["subject_grouped"] and cv["folds"] == 4
    usable = np.ones(len(labels), bool)
    usable[5] = False
    names, counts = np.unique(labels[usable], return_counts=True)
    assert np.asarray(cv["confusion"]).sum(axis=1).tolist() == counts.tolist()
    assert cv["class_counts"] == dict(zip(names.tolist(), counts.tolist()))
    assert cv["accuracy"] > 0.9
    # The no-face image counts as an error end to end.
    assert cv["end_to_end_accuracy"] == pytest.approx(np.trace(np.asarray(cv["confusion"])) / len(labels))
    assert report["chance"]["uniform"] == pytest.approx(1 / 3)
    assert report["chance"]["majority_rate"] == pytest.approx(counts.max() / counts.sum())
    assert report["prior"]["accuracy"] > 0.8 and report["prior"]["evaluated_images"] == len(labels) - 1
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 0
    assert (tmp_path / "eval" / "confusion_prior.png").stat().st_size > 0


def test_evaluate_images_with_a_trained_classifier_and_prior_only(tmp_path):
    features, labels, subjects = emfacs_dataset(12)
    csv_path, table = write_dataset(tmp_path / "train", features, labels, subjects)
    model = toy_model()
    config = EvaluationConfig(kernel="linear", n_trials=1, n_folds=3, min_per_class=5)
    extract = fake_extractor(table, model)
    train_from_images(csv_path, model, tmp_path / "emotion", config=config, extract_features=extract)

    test_features, test_labels, _ = emfacs_dataset(6, classes=("happy", "sad", "angry", "fearful"), seed=3)
    test_csv, test_table = write_dataset(tmp_path / "test", test_features, test_labels)
    report = evaluate_images(
        test_csv, model, tmp_path / "held-out", classifier=tmp_path / "emotion",
        extract_features=fake_extractor(test_table, model),
    )  # fmt: skip
    assert report["mode"] == "classifier"
    assert report["excluded_classes"] == {"fear": 6}  # not a class of the classifier
    assert report["evaluated_images"] == 18
    assert report["classifier"]["accuracy"] > 0.8
    assert report["chance"]["uniform"] == pytest.approx(1 / 3)

    report = evaluate_images(
        test_csv, model, tmp_path / "prior", prior_only=True, config=EvaluationConfig(min_per_class=6),
        extract_features=fake_extractor(test_table, model),
    )  # fmt: skip
    assert report["mode"] == "prior" and "classifier" not in report
    assert report["prior"]["class_counts"] == {"anger": 6, "fear": 6, "happy": 6, "sad": 6}
    with pytest.raises(ValueError, match="not both"):
        evaluate_images(test_csv, model, tmp_path / "x", classifier=tmp_path / "emotion", prior_only=True)


def test_labelled_images_in_code_and_bad_extractors(tmp_path):
    features, labels, _ = emfacs_dataset(6)
    paths = tuple(tmp_path / f"{i}.jpg" for i in range(len(labels)))
    table = {p.name: row for p, row in zip(paths, features)}
    model = toy_model()
    labelled = LabelledImages(paths=paths, labels=labels)
    report = evaluate_images(
        labelled, model, tmp_path / "out", prior_only=True, config=EvaluationConfig(min_per_class=3),
        extract_features=fake_extractor(table, model),
    )  # fmt: skip
    assert report["labels_csv"] is None and report["evaluated_images"] == len(labels)

    def short(paths, model, **_):
        return fake_extractor(table, model)(paths[:-1], model)

    with pytest.raises(ValueError, match="rows for"):
        evaluate_images(labelled, model, tmp_path / "out", prior_only=True, extract_features=short)
