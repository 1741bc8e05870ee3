"""``deepexp3d train CONFIG``: resolve a config by name or file and run :func:`regressor.train.train`.

``CONFIG`` is either the name of a module in :mod:`regressor.configs`
(``default``, ``tiny``, ``synthetic_proof``) or the path of a Python file that
defines ``get_config() -> TrainConfig`` (flax-examples style), or a JSON file
written by a previous run (``WORKDIR/config.json``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Mapping

from regressor.configs.default import TrainConfig, from_dict, override
from regressor.train import TrainResult, train

__all__ = ["load_config", "train_from_config"]


def load_config(path_or_name: str | os.PathLike, overrides: Mapping[str, object] | None = None) -> TrainConfig:
    """The :class:`TrainConfig` named by ``path_or_name``, with dotted ``overrides`` applied.

    Raises:
      ValueError: for an unknown name, or a file without ``get_config``.

    Examples:
      >>> load_config("tiny", {"steps": 3}).steps
      3
    """
    text = str(path_or_name)
    path = Path(text)
    if path.suffix == ".json" and path.is_file():
        config = from_dict(json.loads(path.read_text()))
    elif path.suffix == ".py" and path.is_file():
        spec = importlib.util.spec_from_file_location(f"_deepexp3d_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ValueError(f"{path}: defines no get_config()")
        config = module.get_config()
    elif text.isidentifier():
        try:
            module = importlib.import_module(f"regressor.configs.{text}")
        except ModuleNotFoundError as error:
            raise ValueError(f"config: no built-in config named {text!r} (and no such file)") from error
        config = module.get_config()
    else:
        raise ValueError(f"config: {text!r} is neither a built-in config name nor an existing .py/.json file")
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config: get_config() of {text!r} returned {type(config).__name__}, not TrainConfig")
    return override(config, overrides) if overrides else config


def train_from_config(
    path_or_name: str | os.PathLike,
    *,
    workdir: str | os.PathLike | None = None,
    overrides: Mapping[str, object] | None = None,
    stop_at_step: int | None = None,
) -> TrainResult:
    """Train from a config name or file (what ``deepexp3d train CONFIG`` runs).

    Args:
      path_or_name: see :func:`load_config`.
      workdir: run directory (default ``runs/<config.name>``); an existing run resumes.
      overrides: dotted field overrides, e.g. ``{"steps": 1000, "data.train": ["shards/train"]}``.
      stop_at_step: stop early without a final checkpoint (see :func:`regressor.train.train`).

    Returns:
      The :class:`regressor.train.TrainResult`.
    """
    config = load_config(path_or_name, overrides)
    return train(config, workdir or Path("runs") / config.name, stop_at_step=stop_at_step)
