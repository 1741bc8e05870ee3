"""Input pipeline: decoding, resizing, target-preserving augmentation, grain loaders and evaluation batches."""

from __future__ import annotations

import dataclasses
import json
import shutil

import cv2
import grain
import numpy as np
import pytest

from fitting.shards import ShardDataset, ShardWriter
from regressor.configs.default import AugmentationConfig
from regressor.input_pipeline import (
    annotation_shards,
    augmentation_matrix,
    eval_batches,
    loss_weights,
    photometric_jitter,
    prepare_example,
    resize_crops,
    train_loader,
)


@pytest.fixture(scope="module")
def png_shards(tmp_path_factory):
    """Ten lossless 32×32 frames with known content, expression = frame number."""
    root = tmp_path_factory.mktemp("png-shards")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    with ShardWriter(root / "s0", expression_names=["a", "b"], expression_basis="toy", n_identity=1, image_size=32,
                     image_encoding="png") as writer:
        for k, image in enumerate(images):
            writer.add(image=image, expression=[k, -k], identity=[0], camera=np.zeros(6),
                       landmarks=np.zeros((68, 2)), video_id=f"v{k // 5}", frame_index=k,
                       expression_uncertainty=[0.0, 0.1 * k])
    return ShardDataset(root), images


def test_evaluation_example_is_the_stored_crop(png_shards):
    data, images = png_shards
    example = prepare_example(data[3], image_size=32)
    assert np.array_equal(example["image"], images[3])
    assert example["expression"].tolist() == [3.0, -3.0] and example["index"] == 3
    assert example["weight"].tolist() == [1.0, 1.0]
    weighted = prepare_example(data[3], image_size=32, uncertainty_floor=0.3)
    assert np.allclose(weighted["weight"], [1.0, 0.09 / (0.09 + 0.09)])


def test_resize_matches_opencv_resize():
    image = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    resized = resize_crops(image, 32)
    expected = np.stack([cv2.resize(c, (32, 32), interpolation=cv2.INTER_LINEAR) for c in image])
    assert np.abs(resized.astype(int) - expected.astype(int)).max() <= 1


def test_augmentation_is_a_small_similarity_and_keeps_the_target(png_shards):
    data, images = png_shards
    config = AugmentationConfig(translate=0.05, scale=0.1, rotate_degrees=8.0)
    for seed in range(20):
        matrix = augmentation_matrix(np.random.default_rng(seed), 224, config)
        a, b = matrix[0, 0], matrix[1, 0]
        assert np.isclose(matrix[1, 1], a) and np.isclose(matrix[0, 1], -b)  # similarity, no shear or flip
        assert 0.9 - 1e-9 <= np.hypot(a, b) <= 1.1 + 1e-9
        assert abs(np.degrees(np.arctan2(b, a))) <= 8.0 + 1e-9
        centre = matrix[:, :2] @ [111.5, 111.5] + matrix[:, 2]
        assert np.all(np.abs(centre - 111.5) <= 0.05 * 224 + 1e-9)
    first = prepare_example(data[2], image_size=32, rng=np.random.default_rng(5), augmentation=config)
    again = prepare_example(data[2], image_size=32, rng=np.random.default_rng(5), augmentation=config)
    other = prepare_example(data[2], image_size=32, rng=np.random.default_rng(6), augmentation=config)
    assert np.array_equal(first["image"], again["image"]) and not np.array_equal(first["image"], other["image"])
    assert not np.array_equal(first["image"], images[2])
    assert first["expression"].tolist() == [2.0, -2.0]  # the target is untouched
    disabled = prepare_example(data[2], image_size=32, rng=np.random.default_rng(5),
                               augmentation=dataclasses.replace(config, enabled=False))
    assert np.array_equal(disabled["image"], images[2])


def test_photometric_jitter_only_changes_colours():
    image = np.zeros((16, 16, 3), np.uint8)
    image[4:8, 4:8] = 200
    config = AugmentationConfig(blur_probability=0.0, noise_std=0.0, grayscale_probability=0.0)
    out = photometric_jitter(image, np.random.default_rng(0), config)
    assert out.dtype == np.uint8 and out.shape == image.shape
    # Same structure: the bright square stays the brightest region, pixel for pixel.
    assert np.all(out[4:8, 4:8].mean(axis=2) > out[0:4].mean(axis=2).max())


def test_loss_weights():
    assert loss_weights(np.array([0.0, 1.0]), None).tolist() == [1.0, 1.0]
    assert np.allclose(loss_weights(np.array([0.0, 0.2, np.nan]), 0.2), [1.0, 0.5, 0.0])


def test_loader_is_deterministic_and_resumes_from_its_state(png_shards):
    data, _ = png_shards
    assert isinstance(data, grain.sources.RandomAccessDataSource)
    config = AugmentationConfig()

    def loader():
        return train_loader(data, batch_size=4, image_size=32, augmentation=config, seed=3)

    iterator = iter(loader())
    batches = [next(iterator) for _ in range(3)]
    assert batches[0]["image"].shape == (4, 32, 32, 3) and batches[0]["image"].dtype == np.uint8
    assert batches[0]["expression"].shape == (4, 2) and batches[0]["weight"].shape == (4, 2)
    # Shuffled without replacement within an epoch (10 frames: the first 8 drawn are distinct).
    first_epoch = np.concatenate([b["index"] for b in batches[:2]])
    assert len(set(first_epoch.tolist())) == 8
    for b in batches:  # the target belongs to the image's frame
        assert np.array_equal(b["expression"][:, 0], b["index"].astype(np.float32))
    state = iterator.get_state()
    following = [next(iterator) for _ in range(2)]
    restored = iter(loader())
    restored.set_state(state)
    for expected in following:
        got = next(restored)
        assert np.array_equal(got["index"], expected["index"]) and np.array_equal(got["image"], expected["image"])
    fresh = iter(loader())
    assert np.array_equal(next(fresh)["image"], batches[0]["image"])


@pytest.mark.slow
def test_worker_processes_produce_the_same_examples(png_shards):
    data, _ = png_shards
    config = AugmentationConfig()
    in_process = iter(train_loader(data, batch_size=2, image_size=32, augmentation=config, seed=4))
    workers = iter(train_loader(data, batch_size=2, image_size=32, augmentation=config, seed=4, worker_count=2))

    def examples(iterator, n_batches):
        out = {}
        for _ in range(n_batches):
            batch = next(iterator)
            for k, index in enumerate(batch["index"]):
                out[int(index)] = batch["image"][k]
        return out

    # grain hands records to workers round-robin and each worker batches its own,
    # so batches are grouped differently; the examples and their augmentation are not.
    a, b = examples(in_process, 4), examples(workers, 4)
    assert a.keys() == b.keys() and len(a) == 8
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_eval_batches_cover_every_frame_once_with_padding(png_shards):
    data, images = png_shards
    batches = list(eval_batches(data, batch_size=4, image_size=32))
    assert len(batches) == 3
    assert batches[-1]["mask"].tolist() == [True, True, False, False]
    indices = np.concatenate([b["index"][b["mask"]] for b in batches])
    assert indices.tolist() == list(range(10))
    assert np.array_equal(batches[1]["image"][0], images[4])
    # Split across two processes: disjoint halves, same number of batches each.
    halves = [list(eval_batches(data, batch_size=4, image_size=32, process_index=p, process_count=2)) for p in (0, 1)]
    assert len(halves[0]) == len(halves[1]) == 2
    seen = [np.concatenate([b["index"][b["mask"]] for b in half]).tolist() for half in halves]
    assert seen == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_annotation_output_splits_resolve_to_their_shards(png_shards, tmp_path):
    data, _ = png_shards
    source = data.shard_paths[0]
    for video in ("v0", "v1", "v2"):
        shutil.copytree(source, tmp_path / "shards" / video)
    (tmp_path / "shards" / "v3").mkdir()  # a kept video without frames: no complete shard
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["v0", "v2", "v3"], "validation": ["v1"], "test": []}))
    assert annotation_shards(tmp_path, "train") == [tmp_path / "shards" / "v0", tmp_path / "shards" / "v2"]
    assert annotation_shards(tmp_path, "validation") == [tmp_path / "shards" / "v1"]
    assert len(ShardDataset(annotation_shards(tmp_path, "train"))) == 20
    with pytest.raises(ValueError, match="not in"):
        annotation_shards(tmp_path, "holdout")
    with pytest.raises(FileNotFoundError):
        annotation_shards(tmp_path / "shards", "train")
