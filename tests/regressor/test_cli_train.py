"""``train_from_config``: configs by name, Python file or JSON; overrides; a run started from a file."""

from __future__ import annotations

import json
import textwrap

import pytest

from regressor.cli_train import load_config, train_from_config
from regressor.configs import default, tiny
from regressor.configs.default import from_dict, override, to_dict


def test_configs_resolve_by_name_file_and_json(tmp_path):
    assert load_config("default") == default.get_config()
    assert load_config("tiny") == tiny.get_config()
    assert load_config("tiny", {"optimizer.learning_rate": "0.5"}).optimizer.learning_rate == 0.5
    module = tmp_path / "my_config.py"
    module.write_text(textwrap.dedent(
        """
        import dataclasses
        from regressor.configs import tiny

        def get_config():
            return dataclasses.replace(tiny.get_config(), name="mine", steps=7)
        """
    ))
    assert load_config(module).name == "mine" and load_config(module).steps == 7
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(to_dict(default.get_config())))
    assert load_config(saved) == default.get_config()
    with pytest.raises(ValueError, match="no built-in config"):
        load_config("nonexistent")
    with pytest.raises(ValueError, match="neither"):
        load_config(tmp_path / "missing.py")
    with pytest.raises(ValueError, match="unknown field"):
        override(default.get_config(), {"optimizer.learning_rat": 1.0})
    with pytest.raises(ValueError, match="unknown field"):
        from_dict({"stepz": 3})


def test_train_from_a_config_file(tiny_config, tmp_path):
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(to_dict(tiny_config)))
    result = train_from_config(saved, workdir=tmp_path / "run", stop_at_step=3)
    assert result.step == 3
    assert from_dict(json.loads((tmp_path / "run" / "config.json").read_text())) == tiny_config


def test_overrides_are_typed_like_the_fields():
    config = default.get_config()
    changed = override(config, {"name": "2024", "steps": "10", "optimizer.learning_rate": "1",
                                "model.stage_sizes": "[1, 2]", "data.train": '["a", "b"]',
                                "init_imagenet": "weights.pth", "data.annotation_dir": "null"})
    assert changed.name == "2024"  # a text field keeps a number-like value as text
    assert changed.steps == 10 and changed.optimizer.learning_rate == 1.0
    assert isinstance(changed.optimizer.learning_rate, float)
    assert changed.model.stage_sizes == (1, 2) and changed.data.train == ("a", "b")
    assert changed.init_imagenet == "weights.pth" and changed.data.annotation_dir is None
    assert from_dict(json.loads(json.dumps(to_dict(changed)))) == changed
    for bad, message in [({"steps": "ten"}, "config.steps: expected int, got 'ten'"),
                         ({"steps": "1.5"}, "config.steps: expected int"),
                         ({"augmentation.enabled": "1"}, "config.augmentation.enabled: expected bool"),
                         ({"model.stage_sizes": '[1, "x"]'}, r"config.model.stage_sizes\[1\]: expected int"),
                         ({"data.train": "shards"}, "config.data.train: expected a list"),
                         ({"model": "3"}, "config.model: expected a section")]:
        with pytest.raises(ValueError, match=message):
            override(config, bad)
