"""The EMFACS emotion prior: AU → blendshape mapping, synthetic samples, and its accuracy."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from classifier.ecoc import predict, predict_names, predict_proba
from classifier.emfacs import (
    EMOTIONS,
    EMFACSSampling,
    emfacs_prior_classifier,
    emfacs_prototypes,
    sample_emfacs,
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
