"""Training configurations, flax-examples style: one module per run, each with ``get_config()``.

``default`` is the paper's setting (ResNet-50, 224×224, n_e = 28); ``tiny`` a
seconds-long CPU run on synthetic renders; ``synthetic_proof`` the learning proof
on synthetic renders. The configuration types live in :mod:`regressor.configs.default`.
"""
