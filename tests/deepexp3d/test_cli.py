"""The command line."""

from __future__ import annotations

from typer.testing import CliRunner

from deepexp3d.cli import app


def test_info_sfm(shared_data):
    result = CliRunner().invoke(app, ["info", "sfm"])
    assert result.exit_code == 0, result.output
    assert "vertices=3448" in result.output
    assert "50 of 68" in result.output
    assert "happiness" in result.output


def test_info_missing_file(tmp_path):
    result = CliRunner().invoke(app, ["info", str(tmp_path / "nope.npz")])
    assert result.exit_code == 1
    assert "error: model file not found" in result.output and "nope.npz" in result.output
