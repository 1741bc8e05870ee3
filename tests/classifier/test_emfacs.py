"""The EMFACS emotion prior: AU → blendshape mapping, synthetic samples, the prior of fitted faces, its accuracy."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from classifier.ecoc import predict, predict_names, predict_proba
from classifier.emfacs import (
    EMOTIONS,
    EMFACSSampling,
    FittedSynthesis,
    adapt_to_unlabelled,
    emfacs_prior_classifier,
    emfacs_prototypes,
    fitted_emfacs_samples,
    fitted_expressions,
    sample_emfacs,
    shared_reference_landmarks,
)

# The 53 ICT-FaceKit expression names (ARKit convention with _L/_R; ICT README),
# so the default tests do not need the model archive; checked against it below.
ICT_NAMES = (
    "browDown_L", "browDown_R", "browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R",
    "cheekPuff_L", "cheekPuff_R", "cheekSquint_L", "cheekSquint_R", "eyeBlink_L", "eyeBlink_R",
    "eyeLookDown_L", "eyeLookDown_R", "eyeLookIn_L", "eyeLookIn_R", "eyeLookOut_L", "eyeLookOut_R",
    "eyeLookUp_L", "eyeLookUp_R", "eyeSquint_L", "eyeSquint_R", "eyeWide_L", "eyeWide_R", "jawForward",
    "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimple_L", "mouthDimple_R", "mouthFrown_L",
    "mouthFrown_R", "mouthFunnel", "mouthLeft", "mouthLowerDown_L", "mouthLowerDown_R", "mouthPress_L",
    "mouthPress_R", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmile_L", "mouthSmile_R", "mouthStretch_L", "mouthStretch_R",
    "mouthUpperUp_L", "mouthUpperUp_R", "noseSneer_L", "noseSneer_R",
)  # fmt: skip


def _active(row):
    return {ICT_NAMES[i]: round(float(row[i]), 3) for i in np.flatnonzero(row)}


def test_prototypes_follow_the_mapping_table():
    prototypes = emfacs_prototypes(ICT_NAMES)
    assert prototypes.shape == (7, 53)
    assert _active(prototypes[EMOTIONS.index("neutral")]) == {}
    assert _active(prototypes[EMOTIONS.index("happy")]) == {  # AU6 + AU12
        "cheekSquint_L": 1.0, "cheekSquint_R": 1.0, "mouthSmile_L": 1.0, "mouthSmile_R": 1.0,
    }  # fmt: skip
    assert _active(prototypes[EMOTIONS.index("surprised")]) == {  # AU1 + AU2 + AU5B + AU26
        "browInnerUp_L": 1.0, "browInnerUp_R": 1.0, "browOuterUp_L": 1.0, "browOuterUp_R": 1.0,
        "eyeWide_L": 0.4, "eyeWide_R": 0.4, "jawOpen": 0.5,
    }  # fmt: skip
    assert _active(prototypes[EMOTIONS.index("angry")]) == {  # AU4 + AU5 + AU7 + AU23
        "browDown_L": 1.0, "browDown_R": 1.0, "eyeWide_L": 1.0, "eyeWide_R": 1.0,
        "eyeSquint_L": 1.0, "eyeSquint_R": 1.0, "mouthPress_L": 1.0, "mouthPress_R": 1.0,
    }  # fmt: skip
    assert set(_active(prototypes[EMOTIONS.index("disgusted")])) == {  # AU9 + AU15 + AU16
        "noseSneer_L", "noseSneer_R", "mouthFrown_L", "mouthFrown_R", "mouthLowerDown_L", "mouthLowerDown_R",
    }  # fmt: skip
    assert len(_active(prototypes[EMOTIONS.index("fearful")])) == 13  # 7 AUs, AU26 on jawOpen only
    # Every pair of emotions differs.
    assert len({tuple(row) for row in prototypes}) == 7


def test_ict_names_match_the_model(ict_model):
    assert tuple(ict_model.expression_names) == ICT_NAMES


def test_samples_are_valid_and_seeded():
    features, labels = sample_emfacs(ICT_NAMES, 200, jax.random.key(0))
    assert features.shape == (1400, 53) and labels.shape == (1400,)
    assert features.min() >= 0.0 and features.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(labels), [200] * 7)
    again, _ = sample_emfacs(ICT_NAMES, 200, jax.random.key(0))
    np.testing.assert_array_equal(features, again)
    # Neutral samples carry only the background activation.
    assert features[labels == 0].mean() < 0.06 < features[labels == 1].mean()


def test_non_arkit_names_are_refused():
    with pytest.raises(ValueError, match="ARKit"):
        emfacs_prototypes([f"pca{k}" for k in range(28)])
    with pytest.raises(ValueError, match="intensity"):
        EMFACSSampling(intensity=(0.8, 0.2))


@pytest.fixture(scope="module")
def prior():
    return emfacs_prior_classifier(ICT_NAMES, seed=0, basis_id="ict-facekit:n_e=53:test")


def test_prior_classifies_its_prototypes(prior):
    assert prior.class_names == EMOTIONS and prior.basis_id == "ict-facekit:n_e=53:test"
    assert predict_names(prior, emfacs_prototypes(ICT_NAMES)) == list(EMOTIONS)
    # Half-intensity prototypes too (weaker expressions than the training peak).
    assert predict_names(prior, 0.5 * emfacs_prototypes(ICT_NAMES))[1:] == list(EMOTIONS[1:])


def test_prior_on_held_out_noisy_samples(prior):
    features, labels = sample_emfacs(ICT_NAMES, 200, jax.random.key(12345))
    accuracy = np.mean(predict(prior, features) == labels)
    # Measured 0.99 (chance 1/7 = 0.14).
    assert accuracy > 0.95
    per_class = [np.mean(predict(prior, features[labels == k]) == k) for k in range(7)]
    assert min(per_class) > 0.9
    # Noisier than its training distribution (weak, partial, more background): still far above chance (measured 0.74).
    shifted = EMFACSSampling(intensity=(0.15, 0.6), background=0.1, action_unit_dropout=0.3)
    features, labels = sample_emfacs(ICT_NAMES, 200, jax.random.key(7), shifted)
    assert np.mean(predict(prior, features) == labels) > 0.6
    probabilities = predict_proba(prior, features)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------- the prior of fitted faces

# Small sets keep every test under half a minute on two cores; one batch size, one compiled fitter.
FITTED_PER_CLASS = 30
SYNTHESIS = FittedSynthesis(batch_size=105)
NO_REFERENCE = np.zeros((0, 68, 2), np.float32)


@pytest.fixture(scope="module")
def fitted_faces(ict_face_model):
    """Synthetic EMFACS faces of random identities and poses, fitted from 68 noisy landmarks."""
    return fitted_emfacs_samples(ict_face_model, FITTED_PER_CLASS, jax.random.key(100), synthesis=SYNTHESIS)


@pytest.fixture(scope="module")
def fitted_prior(ict_face_model):
    return emfacs_prior_classifier(
        ict_face_model.expression_names,
        model=ict_face_model,
        samples_per_class=FITTED_PER_CLASS,
        synthesis=SYNTHESIS,
        reference_landmarks=NO_REFERENCE,
    )


def test_fitted_samples_carry_their_prototype(fitted_faces):
    fitted, labels, true = fitted_faces
    # Every synthetic face is fitted (none flagged invalid), within the blendshape bounds.
    assert fitted.shape == true.shape == (7 * FITTED_PER_CLASS, 53)
    np.testing.assert_array_equal(np.bincount(labels), [FITTED_PER_CLASS] * 7)
    assert np.all(np.isfinite(fitted)) and fitted.min() >= 0.0 and fitted.max() <= 1.0
    # The fitter recovers the prototypes' strongest landmark movements: the smile
    # of happy faces [measured 0.45–0.53 vs ≤ 0.09], the open jaw of surprised and
    # fearful ones [0.43–0.54 vs ≤ 0.31]...
    smile = fitted[:, ICT_NAMES.index("mouthSmile_L")]
    jaw = fitted[:, ICT_NAMES.index("jawOpen")]
    by_class = lambda values: np.array([values[labels == k].mean() for k in range(7)])  # noqa: E731
    happy, fearful, surprised = (EMOTIONS.index(name) for name in ("happy", "fearful", "surprised"))
    assert by_class(smile)[happy] > 0.3 > np.delete(by_class(smile), happy).max()
    assert min(by_class(jaw)[[fearful, surprised]]) > np.delete(by_class(jaw), [fearful, surprised]).max() + 0.05
    # ...but not the clean vectors: neutral faces of random identities fit far from zero
    # (the leakage the prior of fitted faces learns) [mean weight ≈ 0.1, largest ≈ 0.5].
    assert fitted[labels == 0].mean() > 0.05 and fitted[labels == 0].mean(axis=0).max() > 0.25


def test_fitted_prior_recovers_the_prototype_of_fitted_faces(fitted_prior, fitted_faces):
    fitted, labels, _ = fitted_faces
    assert fitted_prior.class_names == EMOTIONS
    accuracy = np.mean(predict(fitted_prior, fitted) == labels)
    # The plain prior, trained on clean vectors, on the same fitted faces.
    plain = emfacs_prior_classifier(ICT_NAMES, seed=0)
    plain_accuracy = np.mean(predict(plain, fitted) == labels)
    # Measured 0.60–0.63 against 0.31–0.34 over four seeds (chance 1/7 = 0.14).
    assert accuracy > 0.45, accuracy
    assert accuracy > plain_accuracy + 0.15, (accuracy, plain_accuracy)


def test_fitted_prior_calls_neutral_faces_neutral(fitted_prior, fitted_faces):
    fitted, labels, _ = fitted_faces
    neutral = fitted[labels == EMOTIONS.index("neutral")]
    # Random identities, neutral expression, 68 noisy landmarks, fitted: the plain
    # prior calls almost none of them neutral (measured 0–3 %, a third to a half
    # "fearful"); the fitted prior 33–42 %, the most frequent answer.
    plain = emfacs_prior_classifier(ICT_NAMES, seed=0)
    assert np.mean(predict(plain, neutral) == 0) <= 0.1
    answers = np.bincount(predict(fitted_prior, neutral), minlength=7)
    assert answers[0] >= 0.2 * len(neutral) and answers.argmax() == 0, answers


def test_reference_faces_shift_the_neutral_point(ict_face_model, fitted_prior, tmp_path):
    reference = shared_reference_landmarks()
    if reference is None:
        pytest.skip("shared landmark-images not found (set DEEPEXP3D_DATA)")
    reference = reference[:40]
    shifted = emfacs_prior_classifier(
        ICT_NAMES,
        model=ict_face_model,
        samples_per_class=FITTED_PER_CLASS,
        synthesis=SYNTHESIS,
        reference_landmarks=reference,
        cache=tmp_path,
    )
    # The same learners as without reference faces; the inputs are moved by the
    # reference faces' median fitted response minus that of the synthetic
    # neutral faces the prior was trained on.
    np.testing.assert_array_equal(np.asarray(shifted.learners.weights), np.asarray(fitted_prior.learners.weights))
    response, valid = fitted_expressions(ict_face_model, reference, batch_size=SYNTHESIS.batch_size)
    assert valid.all()
    training_key = jax.random.split(jax.random.key(0))[0]
    fitted, labels, _ = fitted_emfacs_samples(ict_face_model, FITTED_PER_CLASS, training_key, synthesis=SYNTHESIS)
    expected = np.median(response, axis=0) - np.median(fitted[labels == 0], axis=0)
    np.testing.assert_allclose(np.asarray(shifted.feature_mean - fitted_prior.feature_mean), expected, atol=1e-5)
    # Real faces fit with large weights where synthetic neutral faces stay low:
    # cheekPuff [median 0.8 against 0.1–0.3].
    assert expected[ICT_NAMES.index("cheekPuff_L")] > 0.3
    # The cache returns the same prior without fitting again.
    assert len(list(tmp_path.glob("emfacs-prior-*.npz"))) == 1
    again = emfacs_prior_classifier(
        ICT_NAMES,
        model=ict_face_model,
        samples_per_class=FITTED_PER_CLASS,
        synthesis=SYNTHESIS,
        reference_landmarks=reference,
        cache=tmp_path,
    )
    np.testing.assert_array_equal(np.asarray(again.feature_mean), np.asarray(shifted.feature_mean))


def test_prior_cache_is_keyed_by_its_inputs(tmp_path):
    first = emfacs_prior_classifier(ICT_NAMES, samples_per_class=20, seed=1, cache=tmp_path, basis_id="b")
    again = emfacs_prior_classifier(ICT_NAMES, samples_per_class=20, seed=1, cache=tmp_path, basis_id="b")
    np.testing.assert_array_equal(np.asarray(again.learners.weights), np.asarray(first.learners.weights))
    assert again.class_names == EMOTIONS and again.basis_id == "b"
    other = emfacs_prior_classifier(ICT_NAMES, samples_per_class=20, seed=2, cache=tmp_path, basis_id="b")
    assert len(list(tmp_path.glob("emfacs-prior-*.json"))) == 2
    assert not np.array_equal(np.asarray(other.learners.weights), np.asarray(first.learners.weights))
    # A damaged file is rebuilt, with a warning, never trusted.
    for file in tmp_path.glob("emfacs-prior-*.npz"):
        file.write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="unreadable"):
        emfacs_prior_classifier(ICT_NAMES, samples_per_class=20, seed=1, cache=tmp_path, basis_id="b")


def test_adaptation_cancels_per_feature_gains_and_offsets(prior):
    features, labels = sample_emfacs(ICT_NAMES, 50, jax.random.key(3))
    rng = np.random.default_rng(0)
    gain, offset = rng.uniform(0.3, 2.0, 53), rng.uniform(-0.2, 0.5, 53)
    distorted = features * gain + offset
    # On distorted inputs the prior falls from 0.99 [to 0.53]; adapted to each set
    # it answers alike on both.
    assert np.mean(predict(prior, distorted) == labels) < 0.75
    on_clean = predict(adapt_to_unlabelled(prior, features), features)
    on_distorted = predict(adapt_to_unlabelled(prior, distorted), distorted)
    assert np.mean(on_clean == on_distorted) > 0.99
    assert np.mean(on_clean == labels) > 0.9
    with pytest.raises(ValueError, match="at least 20 rows"):
        adapt_to_unlabelled(prior, features[:5])


def test_fitted_prior_arguments_are_checked(ict_face_model):
    with pytest.raises(ValueError, match="only used with model"):
        emfacs_prior_classifier(ICT_NAMES, reference_landmarks=NO_REFERENCE)
    with pytest.raises(ValueError, match="model's expression names"):
        emfacs_prior_classifier(ICT_NAMES[::-1], model=ict_face_model)
    with pytest.raises(ValueError, match="reference_landmarks"):
        emfacs_prior_classifier(ICT_NAMES, model=ict_face_model, reference_landmarks=np.zeros((3, 5, 2)))
    with pytest.raises(ValueError, match="landmark_noise"):
        FittedSynthesis(landmark_noise=-1.0)
    with pytest.raises(ValueError, match="landmark_offset"):
        fitted_emfacs_samples(ict_face_model, 1, jax.random.key(0), landmark_offset=np.zeros((68, 2)))
