"""The demo writes every promised file for the sample photo."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepexp3d.demo import default_demo_inputs, run_demo


@pytest.mark.slow
def test_demo_writes_all_outputs(tmp_path, shared_data, ict_cache, monkeypatch):
    image, landmarks = default_demo_inputs()
    if not image.is_file():
        pytest.skip(f"sample photo not found: {image}")
    monkeypatch.setenv("DEEPEXP3D_CACHE", str(ict_cache))
    result = run_demo(out_dir=tmp_path, log=lambda *a: None)
    for name in ("overlay", "faces", "expression", "mesh", "summary"):
        assert result.files[name].is_file() and result.files[name].stat().st_size > 1000
    summary = json.loads(result.files["summary"].read_text())
    assert len(summary["expression"]) == 53 and len(summary["identity"]) == 100
    # A fit of real landmarks: a few pixels on a face ~170 px between the eye corners.
    assert np.isfinite(result.landmark_rmse_px) and result.landmark_rmse_px < 15.0
    assert set(result.timings) >= {"load model", "fit (incl. compilation)", "write outputs"}
