"""Emotion recognition from 3D expression vectors.

Modules: ``svm`` (binary SVMs in JAX, trained together), ``ecoc`` (error-correcting
output codes, decoding, calibrated probabilities), ``selection`` (folds and
Bayesian hyper-parameter search), ``persistence`` (save/load with an expression
basis id), ``emfacs`` (a label-free prior from EMFACS action-unit prototypes),
``stress`` (the subject-disjoint stress protocol), ``features`` (expression
vectors of labelled photos, cached), ``evaluation`` (cross-validated reports,
confusion matrices, the prior on the same images).
"""
