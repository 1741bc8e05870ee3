"""Tests of batched whole-video fitting (fitting.batch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fitting.batch import bucket_length, fit_videos

REPOSITORY = Path(__file__).resolve().parents[2]


def test_bucket_length_picks_the_smallest_holding_bucket():
    assert bucket_length(1, (64, 256)) == 64
    assert bucket_length(64, (64, 256)) == 64
    assert bucket_length(65, (256, 64)) == 256
    assert bucket_length(300, (64, 256)) == 1024  # beyond the last bucket: ×4 steps
    with pytest.raises(ValueError, match="bucket_sizes"):
        bucket_length(3, ())


def test_fit_videos_validates_inputs():
    import morphable

    rng = np.random.default_rng(0)
    model = morphable.make_model(
        rng.normal(size=(70, 3)), rng.normal(size=(70, 3, 2)), rng.normal(size=(70, 3, 2)),
        triangles=[[0, 1, 2]], landmark_indices=range(68),
    )
    with pytest.raises(ValueError, match=r"videos\[1\]"):
        fit_videos(model, [np.zeros((3, 68, 2)), np.zeros((3, 60, 2))])
    with pytest.raises(ValueError, match="masks"):
        fit_videos(model, [np.zeros((3, 68, 2))], masks=[None, None])


# Runs in a fresh interpreter: the fake CPU devices must be configured before JAX starts.
_TWO_DEVICE_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np, jax, jax.numpy as jnp
    import morphable
    from fitting.video import VideoFitConfig, fit_video
    from fitting.batch import fit_videos, fit_video_batch

    rng = np.random.default_rng(0)
    mean = rng.normal(size=(70, 3)) * np.array([4.0, 5.0, 2.0])
    model = morphable.make_model(mean, rng.normal(size=(70, 3, 5)) * 0.3, rng.normal(size=(70, 3, 4)) * 0.3,
                                 triangles=[[0, 1, 2]], landmark_indices=range(68), expression_kind="blendshape")

    def video(n_frames, seed):
        r = np.random.default_rng(seed)
        t = np.arange(n_frames)
        camera = morphable.WeakPerspectiveCamera(
            rotation=jnp.asarray(np.stack([0.1 * np.sin(0.2 * t), 0.2 * np.cos(0.1 * t), 0 * t], -1), jnp.float32),
            scale=jnp.full(n_frames, 12.0), translation=jnp.tile(jnp.array([320.0, 240.0]), (n_frames, 1)))
        identity = jnp.asarray(r.normal(size=5) * 0.5, jnp.float32)
        expression = jnp.asarray(0.5 + 0.3 * np.sin(0.3 * t[:, None] + r.uniform(0, 6, 4)), jnp.float32)
        points = np.asarray(morphable.project(camera, morphable.landmarks(model, identity, expression)))
        points = points + 0.5 * r.normal(size=points.shape)
        points[3] = np.nan  # a missing frame inside the video
        return points.astype(np.float32)

    # Fixed iteration count: a per-video tolerance test could stop one iteration
    # apart on float noise, which is not what this compares. Six iterations stay
    # short of float32 convergence (around the ninth, where "no step lowers the
    # energy" may stop one run an iteration before the other).
    config = VideoFitConfig(tolerance=0.0, min_valid_frames=3, iterations=6)
    videos = [video(9, 1), video(14, 2)]
    batched = fit_videos(model, videos, config=config, bucket_sizes=(16,), batch_size=2)
    report = {"devices": len(jax.devices()), "max_difference": {}}
    for k, (points, result) in enumerate(zip(videos, batched)):
        single = fit_video(model, points, config=config)
        for field in ("identity", "expression", "landmark_rmse", "expression_std", "frame_valid"):
            a, b = np.asarray(getattr(single, field), float), np.asarray(getattr(result, field), float)
            assert a.shape == b.shape, (field, a.shape, b.shape)
            report["max_difference"][f"{k}.{field}"] = float(np.max(np.abs(a - b)))
        cameras = (np.asarray(single.cameras.translation), np.asarray(result.cameras.translation))
        report["max_difference"][f"{k}.translation_px"] = float(np.max(np.abs(cameras[0] - cameras[1])))
        report[f"{k}.valid"] = [bool(single.valid), bool(result.valid)]

    landmarks = np.full((2, 16, 68, 2), np.nan, np.float32)
    landmarks[0, :9], landmarks[1, :14] = videos
    exists = np.zeros((2, 16), bool)
    exists[0, :9], exists[1, :14] = True, True
    stacked = fit_video_batch(model, landmarks, np.ones((2, 16, 68), bool), exists, config=config)
    report["result_devices"] = len(stacked.expression.sharding.device_set)
    report["padding_expression_zero"] = bool(np.all(np.asarray(stacked.expression)[0, 9:] == 0))
    print("REPORT" + json.dumps(report))
    """
)


def test_two_devices_match_unbatched_per_video_fits():
    """Two fake CPU devices: the batch is sharded over both, and padding does not change any result."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPOSITORY), env.get("PYTHONPATH", "")])
    completed = subprocess.run(
        [sys.executable, "-c", _TWO_DEVICE_SCRIPT], cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    line = next(l for l in completed.stdout.splitlines() if l.startswith("REPORT"))
    report = json.loads(line[len("REPORT") :])
    assert report["devices"] == 2
    assert report["result_devices"] == 2
    assert report["padding_expression_zero"]
    assert report["0.valid"] == [True, True] and report["1.valid"] == [True, True]
    for name, difference in report["max_difference"].items():
        tolerance = 1e-2 if name.endswith("translation_px") else 2e-4
        assert difference <= tolerance, (name, difference)
