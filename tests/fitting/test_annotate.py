"""The annotation pipeline: end to end on real videos, shard contents, splits, kill and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import fitting.annotate as annotate_module
from fitting.annotate import AnnotateConfig, annotate, apply_prune_list, prepare_video, read_manifest, split_of
from fitting.shards import ShardDataset, decode_image, find_shards
from fitting.template import make_template
from fitting.video import VideoFitConfig, fit_video

pytest.importorskip("dlib")

# Small but real: every video of the shared folder, a few frames each.
SMALL = dict(stride=3, max_frames=24, detector_upsample=0, min_frames=8,
             fit=VideoFitConfig(landmark_weight=1.0 / 9.0, identity_prior_weight=64.0, iterations=5))


def _videos(shared_data: Path) -> Path:
    folder = shared_data / "videos"
    if not folder.is_dir():
        pytest.skip(f"no videos in {folder}")
    return folder


@pytest.fixture(scope="module")
def annotated(shared_data, ict_face_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("annotated")
    summary = annotate(
        _videos(shared_data), out, model=ict_face_model, config=AnnotateConfig(**SMALL), workers=2, progress=False
    )
    return out, summary


@pytest.mark.slow
def test_end_to_end_on_shared_videos(annotated, shared_data):
    out, summary = annotated
    records = read_manifest(out)
    video_files = sorted(p.stem for p in (shared_data / "videos").glob("*.mp4"))
    assert sorted(records) == video_files  # one manifest line per video, none lost or duplicated
    assert records["no_face"]["status"] == "failed" and records["no_face"]["reason"] == "no_face"
    assert summary.videos == len(video_files)
    assert summary.ok + summary.pruned + summary.failed == summary.videos
    assert summary.ok >= 1
    for name in ("report.json", "report_identity_norm.png", "report_rmse.png", "splits.json", "settings.json"):
        assert (out / name).is_file()
    splits = json.loads((out / "splits.json").read_text())
    ok = sorted(v for v, r in records.items() if r["status"] == "ok")
    assert sorted(sum(splits.values(), [])) == ok  # every kept video in exactly one split
    # Every stage of every kept video is timed; a video's fit time is its share of its batch's.
    for video_id in ok:
        seconds = records[video_id]["seconds"]
        assert {"decode", "detect", "track", "smooth", "crop", "fit", "write"} <= set(seconds), video_id
        assert all(value >= 0 for value in seconds.values())
        assert records[video_id]["frames_processed"] > 0
    batches: dict = {}
    for record in records.values():
        if "fit_batch" in record:
            key = (record["fit_batch"]["bucket"], record["fit_batch"]["seconds"])
            batches.setdefault(key, []).append(record)
    for (bucket, seconds), members in batches.items():
        assert len(members) == members[0]["fit_batch"]["videos"]
        assert sum(r["seconds"]["fit"] for r in members) == pytest.approx(seconds, rel=1e-6)
        assert all(r["frames_processed"] <= bucket for r in members)
    report = json.loads((out / "report.json").read_text())
    assert report["frames_processed"] == sum(r.get("frames_processed", 0) for r in records.values())
    assert sum(report["stage_shares"].values()) == pytest.approx(1.0)


@pytest.mark.slow
def test_shards_are_aligned_and_match_the_fits(annotated, ict_face_model):
    out, _ = annotated
    shards = find_shards(out / "shards")
    assert shards, "no shard written"
    data = ShardDataset(shards)
    template = make_template(ict_face_model)
    records = read_manifest(out)
    per_video = {}
    for index in range(len(data)):
        item = data[index]
        per_video.setdefault(item["video_id"], []).append(item)
        # The cleaned landmarks, mapped into the crop, land on the template (similarity fit residual).
        error = np.sqrt(np.mean(np.sum((item["landmarks"] - template.points) ** 2, axis=1)))
        assert error < 0.08 * template.size, f"{item['video_id']} frame {item['frame_index']}: {error:.1f} px"
        crop = decode_image(item["image"])
        assert crop.shape == (224, 224, 3) and crop.std() > 5  # a real picture, not an empty border
    for video_id, items in per_video.items():
        record = records[video_id]
        assert record["status"] == "ok"
        assert len(items) == record["frames_kept"]
        identities = np.stack([i["identity"] for i in items])
        np.testing.assert_allclose(identities, identities[:1].repeat(len(items), 0))
        assert np.linalg.norm(identities[0]) == pytest.approx(record["identity_norm"], rel=1e-5)
        rmse_crop = np.array([i["rmse"] for i in items])
        scale = np.array([np.sqrt(abs(np.linalg.det(i["alignment"][:, :2]))) for i in items])
        np.testing.assert_allclose(rmse_crop / scale, record["rmse_px"], rtol=1e-4)


def _shard_items(out: Path) -> dict[str, list[dict]]:
    data = ShardDataset(find_shards(out / "shards"))
    items: dict[str, list[dict]] = {}
    for index in range(len(data)):
        item = data[index]
        items.setdefault(str(item["video_id"]), []).append(item)
    return items


@pytest.mark.slow
def test_batched_fits_equal_per_video_fits(annotated, shared_data, ict_face_model):
    """The pipeline fits videos together (fit_videos); each must equal its own fit_video."""
    from fitting.detection import DlibDetector

    out, _ = annotated
    records = read_manifest(out)
    batched = sorted(v for v, r in records.items() if r["status"] == "ok" and r["fit_batch"]["videos"] > 1)
    assert len(batched) >= 2, "no video was fitted in a batch with others"
    config = AnnotateConfig(**SMALL)
    template = make_template(ict_face_model)
    detector = DlibDetector(upsample=config.detector_upsample)
    items = _shard_items(out)
    for video_id in batched[:2]:
        prepared = prepare_video(records[video_id]["path"], video_id, config, template, detector=detector)
        assert prepared.status == "ok"
        single = fit_video(ict_face_model, prepared.landmarks, mask=prepared.valid, config=config.fit)
        kept = prepared.valid & np.asarray(single.frame_valid)
        frames = [item["frame_index"] for item in items[video_id]]
        np.testing.assert_array_equal(frames, prepared.frame_indices[kept])
        expression = np.stack([item["expression"] for item in items[video_id]])
        np.testing.assert_allclose(expression, np.asarray(single.expression)[kept], atol=1e-4)
        np.testing.assert_allclose(items[video_id][0]["identity"], np.asarray(single.identity), atol=1e-4)
        np.testing.assert_allclose(records[video_id]["rmse_px"], np.asarray(single.landmark_rmse)[kept], atol=1e-3)
        assert records[video_id]["fit_iterations"] == int(single.iterations)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # Ray's fork + exec, not a bare fork
def test_ray_engine_matches_the_process_engine(annotated, shared_data, ict_face_model, tmp_path, monkeypatch):
    """Detection and cleaning as Ray tasks on a local instance: the same manifest and shards."""
    ray = pytest.importorskip("ray")
    reference, _ = annotated
    names = ("grid_bbaf2n", "no_face", "liveportrait_d20")
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in names:
        os.symlink(_videos(shared_data) / f"{name}.mp4", videos / f"{name}.mp4")

    def not_ray(*args, **kwargs):
        raise AssertionError("engine='ray' prepared videos without Ray")

    monkeypatch.setattr(annotate_module, "_ProcessEngine", not_ray)
    monkeypatch.setattr(annotate_module, "_InlineEngine", not_ray)
    out = tmp_path / "ray"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        annotate(videos, out, model=ict_face_model, config=AnnotateConfig(**SMALL), workers=2, engine="ray",
                 progress=False)
        assert ray.is_initialized()  # the caller's instance is used, not shut down
    finally:
        ray.shutdown()

    expected, got = read_manifest(reference), read_manifest(out)
    assert sorted(got) == sorted(names)
    for name in names:
        assert (got[name]["status"], got[name]["reason"]) == (expected[name]["status"], expected[name]["reason"])
    assert got["no_face"]["status"] == "failed" and got["grid_bbaf2n"]["status"] == "ok"
    expected_items, got_items = _shard_items(reference), _shard_items(out)
    assert sorted(got_items) == sorted(v for v in names if expected[v]["status"] == "ok")
    for video_id, items in got_items.items():
        assert len(items) == len(expected_items[video_id])
        for a, b in zip(items, expected_items[video_id]):
            assert a["frame_index"] == b["frame_index"]
            assert bytes(a["image"]) == bytes(b["image"])  # the same crops, byte for byte
            for name in ("expression", "identity", "camera", "landmarks"):
                np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5, err_msg=f"{video_id} {name}")


class _SlowFaceDetector:
    """Finds a fixed 'face' (the template's points, shifted) after a known delay per frame."""

    def __init__(self, points: np.ndarray, delay: float):
        self.points, self.delay, self.calls = points, delay, 0

    def detect(self, image):
        from fitting.detection import FaceDetection

        self.calls += 1
        time.sleep(self.delay)
        box = [*self.points.min(0), *self.points.max(0)]
        return FaceDetection.create([box], self.points[None], [1.0])


def test_prepare_video_times_each_stage(tmp_path):
    import cv2

    from fitting.template import Template

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (320, 240))
    for k in range(12):
        writer.write(np.full((240, 320, 3), 10 * k, np.uint8))
    writer.release()
    rng = np.random.default_rng(0)
    template = Template(points=rng.uniform(60, 160, (68, 2)), weights=np.ones(68))
    detector = _SlowFaceDetector(template.points * 0.8 + 30.0, delay=0.1)
    config = AnnotateConfig(stride=2, min_frames=3)
    started = time.perf_counter()
    prepared = prepare_video(path, "clip", config, template, detector=detector)
    elapsed = time.perf_counter() - started
    assert prepared.status == "ok" and detector.calls == 6 and len(prepared.crops) == 6
    seconds = prepared.seconds
    assert set(seconds) == {"decode", "detect", "track", "smooth", "crop"}  # no setup: the detector was given
    assert seconds["detect"] >= 6 * 0.1  # the detector's delay is charged to detection ...
    assert seconds["track"] < 0.2 and seconds["decode"] < 0.3  # ... not to tracking or decoding (≥ 0.6 s)
    assert sum(seconds.values()) <= elapsed


def test_split_assignment_is_stable_and_proportional():
    ids = [f"video-{k}" for k in range(4000)]
    splits = [split_of(v, 7) for v in ids]
    fractions = {s: splits.count(s) / len(ids) for s in ("train", "validation", "test")}
    assert fractions["train"] == pytest.approx(0.70, abs=0.03)
    assert fractions["validation"] == pytest.approx(0.15, abs=0.03)
    assert splits == [split_of(v, 7) for v in ids]  # independent of order or other videos
    assert splits != [split_of(v, 8) for v in ids]


@pytest.mark.slow
def test_manual_pruning_without_refitting(annotated, tmp_path):
    out, _ = annotated
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    ok = sorted(v for v, r in read_manifest(copy).items() if r["status"] == "ok")
    prune_file = tmp_path / "prune.txt"
    prune_file.write_text(f"# visibly failed\n{ok[0]}\nnot-a-video\n")
    assert apply_prune_list(copy, prune_file) == [ok[0]]
    records = read_manifest(copy)
    assert records[ok[0]]["status"] == "pruned" and records[ok[0]]["reason"] == "manual"
    splits = json.loads((copy / "splits.json").read_text())
    assert ok[0] not in sum(splits.values(), [])


def test_settings_mismatch_is_refused(tmp_path, ict_face_model, shared_data):
    empty = tmp_path / "videos"
    empty.mkdir()
    annotate(empty, tmp_path / "out", model=ict_face_model, config=AnnotateConfig(stride=2), workers=0, progress=False)
    with pytest.raises(ValueError, match="different settings"):
        annotate(empty, tmp_path / "out", model=ict_face_model, config=AnnotateConfig(stride=3), workers=0, progress=False)


def test_corrupt_and_empty_videos_are_recorded_not_fatal(tmp_path, ict_face_model):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "corrupt.mp4").write_bytes(os.urandom(5000))
    (videos / "empty.mp4").write_bytes(b"")
    summary = annotate(videos, tmp_path / "out", model=ict_face_model, config=AnnotateConfig(**SMALL), workers=0,
                       progress=False)
    records = read_manifest(tmp_path / "out")
    assert {r["status"] for r in records.values()} == {"failed"}
    assert summary.failed == 2 and all(r["reason"] for r in records.values())


_RUNNER = textwrap.dedent(
    """
    import sys
    from fitting.annotate import AnnotateConfig, annotate
    from fitting.video import VideoFitConfig
    from morphable.io import load_ict
    config = AnnotateConfig(stride=3, max_frames=24, detector_upsample=0, min_frames=8,
                            fit=VideoFitConfig(landmark_weight=1.0 / 9.0, identity_prior_weight=64.0, iterations=5))
    annotate(sys.argv[1], sys.argv[2], model=load_ict(region="face", cache_dir=sys.argv[3]), config=config,
             workers=0, progress=False)
    """
)


def _run(videos: Path, out: Path, cache: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _RUNNER, str(videos), str(out), str(cache)], env=env)


def _shard_arrays(out: Path) -> dict:
    data = ShardDataset(find_shards(out / "shards"))
    arrays = {name: np.asarray(data.column(name)) for name in ("expression", "identity", "landmarks", "frame_index")}
    arrays["video_id"] = np.asarray(data.column("video_id"))
    arrays["images"] = [bytes(data[i]["image"]) for i in range(len(data))]
    return arrays


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_dataset(tmp_path, shared_data, ict_face_model, ict_cache):
    source = _videos(shared_data)
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("WolfgangLanger_Pexels.mp4", "no_face.mp4", "grid_bbaf2n.mp4", "liveportrait_d3.mp4"):
        os.symlink(source / name, videos / name)
    env = dict(os.environ)
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax-cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

    reference = tmp_path / "reference"
    assert _run(videos, reference, ict_cache, env).wait(timeout=600) == 0

    resumed = tmp_path / "resumed"
    process = _run(videos, resumed, ict_cache, env)
    deadline = time.time() + 600
    manifest = resumed / "manifest.jsonl"
    while time.time() < deadline:
        if manifest.is_file() and manifest.read_text().count("\n") >= 1:
            break
        if process.poll() is not None:
            break
        time.sleep(0.05)
    killed = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert killed, "the run finished before it could be killed"
    partial_lines = manifest.read_text().count("\n")
    assert 1 <= partial_lines < 4
    assert _run(videos, resumed, ict_cache, env).wait(timeout=600) == 0

    first, second = read_manifest(reference), read_manifest(resumed)
    assert sorted(first) == sorted(second)
    assert len(manifest.read_text().splitlines()) == 4  # no duplicated video
    for video_id in first:
        assert first[video_id]["status"] == second[video_id]["status"]
    a, b = _shard_arrays(reference), _shard_arrays(resumed)
    np.testing.assert_array_equal(a["video_id"], b["video_id"])
    np.testing.assert_array_equal(a["frame_index"], b["frame_index"])
    np.testing.assert_allclose(a["expression"], b["expression"], atol=1e-5)
    np.testing.assert_allclose(a["identity"], b["identity"], atol=1e-5)
    np.testing.assert_allclose(a["landmarks"], b["landmarks"], atol=1e-4)
    assert a["images"] == b["images"]  # the same crops, byte for byte
    assert json.loads((reference / "splits.json").read_text()) == json.loads((resumed / "splits.json").read_text())
