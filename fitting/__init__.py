"""Landmark-energy fitting of the morphable model to images and whole videos.

Planned contents (see the project issues): landmark energies, single-image and
whole-video solvers, batches of videos across devices, landmark detection
adapters, tracking and cleaning, template alignment and the pseudo-ground-truth
annotation pipeline. Depends only on :mod:`morphable`.
"""
