"""DeepExp3D: a Flax ResNet-50 that regresses the 3D expression vector from an aligned face image.

Planned contents: the model, its input pipeline over annotation shards,
training with checkpoints, and batched inference. Depends on :mod:`morphable`
and :mod:`fitting`.
"""
