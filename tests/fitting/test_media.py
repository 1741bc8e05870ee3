"""Image and video reading: formats decided by content, channel conversions, bad files, streaming."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fitting.media import (
    DEFAULT_MAX_PIXELS,
    ImageTooLargeError,
    MediaError,
    image_size,
    iterate_video,
    read_image,
    read_video_info,
)


def _pattern(height=48, width=64):
    """An RGB image whose three channels differ, so a BGR/RGB swap is visible."""
    rng = np.random.default_rng(0)
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = 200  # red
    image[..., 1] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    image[..., 2] = rng.integers(0, 60, (height, width))
    return image


def _write(path, rgb):
    ok, encoded = cv2.imencode(path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    path.write_bytes(encoded.tobytes())
    return path


def test_png_round_trip_is_exact_and_rgb(tmp_path):
    image = _pattern()
    path = _write(tmp_path / "a.png", image)
    loaded = read_image(path)
    assert loaded.dtype == np.uint8 and loaded.shape == image.shape
    np.testing.assert_array_equal(loaded, image)


def test_webp_named_jpg_is_decoded_by_content(tmp_path):
    image = _pattern()
    ok, webp = cv2.imencode(".webp", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert ok
    path = tmp_path / "photo.jpg"
    path.write_bytes(webp.tobytes())
    assert webp.tobytes()[8:12] == b"WEBP"  # really a WebP file behind the .jpg name
    loaded = read_image(path)
    np.testing.assert_array_equal(loaded, image)  # quality 101 is lossless WebP


def test_greyscale_becomes_three_equal_channels(tmp_path):
    grey = np.arange(48 * 64, dtype=np.uint32).reshape(48, 64).astype(np.uint8)
    path = tmp_path / "grey.png"
    assert cv2.imwrite(str(path), grey)
    loaded = read_image(path)
    assert loaded.shape == (48, 64, 3)
    for channel in range(3):
        np.testing.assert_array_equal(loaded[..., channel], grey)


def test_real_greyscale_photo_from_the_data_set(shared_data):
    import csv

    index = shared_data / "landmark-images" / "index.csv"
    if not index.is_file():
        pytest.skip(f"{index} missing")
    rows = [row for row in csv.DictReader(index.open()) if row["mode"] == "L"]
    if not rows:
        pytest.skip("no greyscale photo listed")
    loaded = read_image(shared_data / "landmark-images" / rows[0]["subset"] / rows[0]["image"])
    assert loaded.shape == (int(rows[0]["height"]), int(rows[0]["width"]), 3)
    assert np.array_equal(loaded[..., 0], loaded[..., 1]) and np.array_equal(loaded[..., 1], loaded[..., 2])


def test_sixteen_bit_and_alpha_are_converted(tmp_path):
    image = _pattern()
    deep = image.astype(np.uint16) * 256 + 37  # top byte v, low byte 37: keeping the wrong byte fails
    bgra = np.dstack([cv2.cvtColor(deep, cv2.COLOR_RGB2BGR), np.full(deep.shape[:2], 65535, np.uint16)])
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), bgra)
    np.testing.assert_array_equal(read_image(path), image)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_truncated_image_is_an_error_naming_the_file(tmp_path, suffix):
    ok, encoded = cv2.imencode(suffix, _pattern(96, 128))
    assert ok
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(encoded.tobytes()[: int(encoded.size * 0.6)])
    with pytest.raises(MediaError, match="cut"):
        read_image(path)


def test_random_bytes_empty_file_and_directory(tmp_path):
    noise = tmp_path / "noise.jpg"
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match="noise.jpg"):
        read_image(noise)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        read_image(empty)
    with pytest.raises(MediaError, match="not a file"):
        read_image(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_video_info(tmp_path / "nope.mp4")
    with pytest.raises(FileNotFoundError):
        iterate_video(tmp_path / "nope.mp4")


def test_unicode_path(tmp_path):
    path = _write(tmp_path / "visage é 顔.png", _pattern())
    assert read_image(path).shape == (48, 64, 3)


def test_max_pixels_is_checked_from_the_header_before_decoding(tmp_path, monkeypatch):
    path = _write(tmp_path / "a.png", _pattern(100, 300))
    assert image_size(path) == (300, 100)
    decoded = []
    monkeypatch.setattr(cv2, "imdecode", lambda *args: decoded.append(1))
    with pytest.raises(ImageTooLargeError, match="max_pixels=29,999"):
        read_image(path, max_pixels=29_999)
    assert not decoded  # refused on the header alone
    monkeypatch.undo()
    assert read_image(path, max_pixels=30_000).shape == (100, 300, 3)


def test_ten_thousand_square_image_is_read_by_default_and_refused_when_asked(tmp_path):
    # The decision documented in fitting.media: the default limit (2**28 pixels)
    # reads a 10k×10k photo; a lower limit refuses it with a clear error.
    assert 10_000 * 10_000 < DEFAULT_MAX_PIXELS
    big = np.zeros((10_000, 10_000), np.uint8)
    big[4000:6000, 3000:7000] = 255
    ok, encoded = cv2.imencode(".jpg", big)
    assert ok
    path = tmp_path / "huge.jpg"
    path.write_bytes(encoded.tobytes())
    del big
    with pytest.raises(ImageTooLargeError, match="10000×10000"):
        read_image(path, max_pixels=50_000_000)
    loaded = read_image(path)
    assert loaded.shape == (10_000, 10_000, 3)
    assert loaded[5000, 5000, 0] > 200 and loaded[100, 100, 0] < 50


def _write_video(path, frames, fps=10.0):
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _numbered_frames(count, height=40, width=56):
    """Frame k: red channel 255, green channel 10·k (identifies the frame), blue 0."""
    frames = []
    for k in range(count):
        frame = np.zeros((height, width, 3), np.uint8)
        frame[..., 0] = 255
        frame[..., 1] = 10 * k
        frames.append(frame)
    return frames


def test_video_stride_max_frames_indices_and_rgb_order(tmp_path):
    path = _write_video(tmp_path / "v.avi", _numbered_frames(11), fps=12.5)
    info = read_video_info(path)
    assert (info.width, info.height, info.frame_count) == (56, 40, 11)
    assert info.fps == pytest.approx(12.5)
    assert info.duration_s == pytest.approx(11 / 12.5)

    everything = list(iterate_video(path))
    assert [index for index, _ in everything] == list(range(11))
    strided = list(iterate_video(path, stride=3))
    assert [index for index, _ in strided] == [0, 3, 6, 9]
    for index, frame in strided:
        assert frame.shape == (40, 56, 3) and frame.dtype == np.uint8
        # Red stays red (RGB, not OpenCV's BGR) and green identifies the frame (JPEG-coded).
        assert frame[..., 0].mean() > 240 and frame[..., 2].mean() < 15
        assert abs(frame[..., 1].mean() - 10 * index) < 4
    limited = list(iterate_video(path, stride=2, max_frames=3))
    assert [index for index, _ in limited] == [0, 2, 4]
    assert list(iterate_video(path, max_frames=0)) == []


def test_iterate_video_streams_lazily(tmp_path):
    path = _write_video(tmp_path / "v.avi", _numbered_frames(5))
    frames = iterate_video(path)
    path.unlink()  # opened only at the first next(): the generator has not touched it yet
    with pytest.raises(MediaError):
        next(frames)


@pytest.mark.parametrize("content", ["random", "empty", "truncated"])
def test_corrupt_video_is_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.mp4"
    if content == "random":
        path.write_bytes(np.random.default_rng(2).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    elif content == "empty":
        path.write_bytes(b"")
    else:
        good = _write_video(tmp_path / "good.avi", _numbered_frames(5))
        path.write_bytes(good.read_bytes()[:100])
    with pytest.raises(MediaError, match="bad.mp4"):
        read_video_info(path)
    with pytest.raises(MediaError, match="bad.mp4"):
        list(iterate_video(path))


def test_bad_stride_and_max_frames(tmp_path):
    path = _write_video(tmp_path / "v.avi", _numbered_frames(2))
    with pytest.raises(ValueError, match="stride"):
        iterate_video(path, stride=0)
    with pytest.raises(ValueError, match="max_frames"):
        iterate_video(path, max_frames=-1)


def test_real_video_metadata_and_frames(shared_data):
    path = shared_data / "videos" / "WolfgangLanger_Pexels.mp4"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    info = read_video_info(path)
    # The data README (ffprobe): 640×360, 23.976 fps, 472 frames.
    assert (info.width, info.height) == (640, 360)
    assert info.fps == pytest.approx(23.976, abs=1e-3)
    assert abs(info.frame_count - 472) <= 1
    frames = list(iterate_video(path, stride=100))
    assert [index for index, _ in frames] == [0, 100, 200, 300, 400]
    assert all(frame.shape == (360, 640, 3) for _, frame in frames)


def _png_header_only(path, width, height):
    """A PNG that declares ``width × height`` grey pixels but holds no pixel data."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_refused_without_allocating(tmp_path):
    # 40,000² = 1.6 gigapixels declared: Pillow refuses to parse it as a bomb, so only a
    # lower bound (2 × Pillow's limit ≈ 179 MP) is known, which exceeds max_pixels here.
    path = _png_header_only(tmp_path / "bomb.png", 40_000, 40_000)
    with pytest.raises(ImageTooLargeError, match="more than"):
        read_image(path, max_pixels=100_000_000)
    # Under the default limit the bound does not decide; decoding then fails cleanly.
    with pytest.raises(MediaError, match="bomb.png"):
        read_image(path)
    # A header below Pillow's bomb limit gives the exact size.
    small = _png_header_only(tmp_path / "declared.png", 12_000, 9_000)
    assert image_size(small) == (12_000, 9_000)
    with pytest.raises(ImageTooLargeError, match="12000×9000"):
        read_image(small, max_pixels=100_000_000)
