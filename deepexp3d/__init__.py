"""The top of the stack: the ``deepexp3d`` command line and end-to-end demo/predict."""

__version__ = "0.1.0"
