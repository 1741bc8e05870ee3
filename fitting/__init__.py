"""Landmark-energy fitting of the morphable model to images and whole videos, and the data pipeline around it.

Modules (import by full path, e.g. ``from fitting.image import fit_image``):
``image`` (single image, every camera model), ``faces`` (photo → detected
faces → fits), ``video`` and ``batch`` (whole
videos, one identity per video, batches across devices), ``detection``,
``media``, ``tracking``, ``smoothing``, ``pruning``, ``landmark_pipeline``
(landmarks and video cleaning), ``template`` and ``shards`` (aligned crops and
training shards), ``annotate`` (the pseudo-ground-truth pipeline).
Depends only on :mod:`morphable`.
"""
