"""Emotion recognition from 3D expression vectors.

Planned contents: ECOC with SVM binary learners in JAX, model selection, and an
emotion prior built from EMFACS action-unit prototypes that needs no labelled
data. Depends on the packages below it.
"""
