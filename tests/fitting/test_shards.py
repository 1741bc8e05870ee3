"""Training shards: exact round trips, atomic commits, validation of damaged or mixed shards."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fitting.shards import (
    PARTIAL_MARKER,
    ShardDataset,
    ShardWriter,
    decode_image,
    find_shards,
    read_shard_metadata,
    remove_partial_shards,
)

N_E, N_I, SIZE = 5, 4, 16


def _frames(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        dict(
            image=rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
            expression=rng.standard_normal(N_E).astype(np.float32),
            expression_uncertainty=rng.uniform(0, 1, N_E).astype(np.float32),
            identity=rng.standard_normal(N_I).astype(np.float32),
            camera=rng.standard_normal(6).astype(np.float32),
            landmarks=rng.uniform(0, SIZE, (68, 2)).astype(np.float32),
            alignment=rng.standard_normal((2, 3)),
            rmse=np.float32(rng.uniform(0, 3)),
            video_id=f"video-{seed}-{k % 3}-ünïcode",
            frame_index=1000 * seed + k,
            subject_id=f"subject-{k % 2}",
        )
        for k in range(count)
    ]


def _write(path: Path, frames: list[dict], *, encoding: str = "png", basis: str = "toy-basis") -> Path:
    with ShardWriter(path, expression_names=[f"e{k}" for k in range(N_E)], expression_basis=basis, n_identity=N_I,
                     image_size=SIZE, image_encoding=encoding, extra={"note": "test"}) as writer:
        for frame in frames:
            writer.add(**frame)
    return path


def test_round_trip_is_exact_across_shards(tmp_path):
    first, second = _frames(7, seed=1), _frames(5, seed=2)
    _write(tmp_path / "shard-a", first)
    _write(tmp_path / "shard-b", second)
    data = ShardDataset(tmp_path)
    assert len(data) == 12
    assert data.expression_names == tuple(f"e{k}" for k in range(N_E))
    assert data.locate(7) == (1, 0)
    for index, frame in enumerate(first + second):
        record = data[index]
        assert record["index"] == index
        assert np.array_equal(decode_image(record["image"]), frame["image"])  # PNG: lossless
        for name in ("expression", "expression_uncertainty", "identity", "camera", "landmarks", "alignment", "rmse"):
            assert np.array_equal(record[name], frame[name]), name
            assert record[name].dtype == np.asarray(frame[name]).dtype or name == "rmse"
        assert record["video_id"] == frame["video_id"]
        assert record["subject_id"] == frame["subject_id"]
        assert record["frame_index"] == frame["frame_index"]
    assert np.array_equal(data[-1]["expression"], second[-1]["expression"])
    assert np.array_equal(data.column("expression"), np.stack([f["expression"] for f in first + second]))
    assert np.allclose(data.column_mean("identity"), np.mean([f["identity"] for f in first + second], axis=0))
    assert data.videos() == sorted({f["video_id"] for f in first + second})
    with pytest.raises(IndexError):
        data[12]
    # Memory maps are per process: a pickled copy (a grain worker) reads the same frames.
    copy = pickle.loads(pickle.dumps(data))
    assert np.array_equal(copy[9]["image"], data[9]["image"])


def test_jpeg_crops_are_close(tmp_path):
    frames = _frames(3, seed=3)
    for frame in frames:  # smooth images: what JPEG is for
        frame["image"] = np.broadcast_to(np.linspace(0, 255, SIZE, dtype=np.uint8)[None, :, None], (SIZE, SIZE, 3)).copy()
    data = ShardDataset(_write(tmp_path / "jpeg", frames, encoding="jpeg"))
    error = np.abs(data.image(1).astype(int) - frames[1]["image"].astype(int))
    assert error.mean() < 3


def test_a_shard_killed_before_its_rename_is_never_read(tmp_path):
    _write(tmp_path / "complete", _frames(4, seed=4))
    # A writer process killed (SIGKILL) at the commit point: every file written, no rename.
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import fitting.shards as shards
        from test_shards import _frames, _write
        shards.os.rename = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        _write(shards.Path({str(tmp_path / "killed")!r}), _frames(6, seed=5))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], capture_output=True)
    assert result.returncode == -9, result.stderr.decode()
    partials = [p for p in tmp_path.iterdir() if PARTIAL_MARKER in p.name]
    assert len(partials) == 1 and (partials[0] / "metadata.json").is_file()  # complete content, never committed
    assert not (tmp_path / "killed").exists()
    assert find_shards(tmp_path) == [tmp_path / "complete"]
    assert len(ShardDataset(tmp_path)) == 4
    with pytest.raises(ValueError, match="partial shard"):
        ShardDataset([partials[0]])
    assert remove_partial_shards(tmp_path) == partials
    assert [p.name for p in tmp_path.iterdir()] == ["complete"]


def test_a_failed_rename_leaves_nothing(tmp_path, monkeypatch):
    import fitting.shards as shards

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(shards.os, "rename", fail)
    with pytest.raises(OSError, match="disk full"):
        _write(tmp_path / "shard", _frames(2, seed=6))
    assert list(tmp_path.iterdir()) == []


def test_damaged_or_mixed_shards_are_refused(tmp_path):
    path = _write(tmp_path / "a", _frames(3, seed=7))
    read_shard_metadata(path)
    expression = path / "expression.npy"
    expression.write_bytes(expression.read_bytes()[:-4])
    with pytest.raises(ValueError, match="expression.npy.*truncated"):
        ShardDataset([path])
    _write(tmp_path / "b", _frames(3, seed=8), basis="toy-basis")
    _write(tmp_path / "c", _frames(3, seed=9), basis="other-basis")
    with pytest.raises(ValueError, match="expression basis differs"):
        ShardDataset([tmp_path / "b", tmp_path / "c"])
    with pytest.raises(ValueError, match="expected 'wanted'"):
        ShardDataset([tmp_path / "b"], expression_basis="wanted")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no complete shard"):
        ShardDataset([tmp_path / "empty"])


def test_writer_validates_its_input(tmp_path):
    frame = _frames(1, seed=10)[0]
    writer = ShardWriter(tmp_path / "s", expression_names=["e"] * N_E, expression_basis="b", n_identity=N_I,
                         image_size=SIZE)
    with pytest.raises(ValueError, match="image"):
        writer.add(**{**frame, "image": np.zeros((SIZE + 1, SIZE, 3), np.uint8)})
    with pytest.raises(ValueError, match="expression: contains NaN"):
        writer.add(**{**frame, "expression": np.full(N_E, np.nan)})
    with pytest.raises(ValueError, match="landmarks"):
        writer.add(**{**frame, "landmarks": np.zeros((5, 2))})
    writer.add(**frame)
    writer.finish()
    with pytest.raises(FileExistsError):
        ShardWriter(tmp_path / "s", expression_names=["e"], expression_basis="b", n_identity=1)
    with pytest.raises(ValueError, match="partial"):
        ShardWriter(tmp_path / f"x{PARTIAL_MARKER}1", expression_names=["e"], expression_basis="b", n_identity=1)
    # An exception inside the context manager discards the frames.
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "t", expression_names=["e"] * N_E, expression_basis="b", n_identity=N_I,
                         image_size=SIZE) as failing:
            failing.add(**frame)
            raise RuntimeError("annotation failed")
    assert not (tmp_path / "t").exists()
    assert sorted(os.listdir(tmp_path)) == ["s"]
