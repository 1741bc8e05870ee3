"""DeepExp3D: a Flax ResNet-50 that regresses the 3D expression vector from an aligned face image.

Modules: ``models`` (ResNet), ``configs`` (run configurations), ``input_pipeline``
(grain over annotation shards), ``train`` (training, checkpoints, data
parallelism), ``cli_train`` (runs from a config name or file), ``imagenet``
(torchvision/timm ImageNet weights as initialisation), ``inference`` (batched
prediction), ``synthetic`` (rendered faces with exact targets). Depends on
:mod:`morphable` and :mod:`fitting`.
"""
