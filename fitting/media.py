"""Reading images and videos as RGB ``uint8`` arrays, with errors that name the file.

* :func:`read_image` decodes by **content**, not by suffix (a WebP photo saved as
  ``.jpg`` loads), turns greyscale, 16-bit and alpha images into 3-channel RGB
  ``uint8``, and refuses an image whose header declares more than ``max_pixels``
  pixels *before* decoding it.
* :func:`iterate_video` streams the frames of a video one at a time (memory
  bounded by one frame whatever the length), optionally every ``stride``-th frame
  and at most ``max_frames`` of them; :func:`read_video_info` gives its frame
  rate, frame count and size.

OpenCV does the decoding (it is already a core dependency, and its FFmpeg-backed
``VideoCapture`` reads every clip of the shared data set), so no PyAV is needed.

Huge images: the default limit, :data:`DEFAULT_MAX_PIXELS` = 2²⁸ ≈ 268 million
pixels, lets a 10,000 × 10,000 photo through (300 MB as RGB) and stops decompression
bombs and gigapixel scans before they allocate gigabytes; pass ``max_pixels=None``
to lift it or a smaller number to be stricter. The size comes from Pillow's header
parser (Pillow is installed with matplotlib), which reads a few bytes only; formats
Pillow does not parse are checked right after decoding.

Errors: a missing file raises :class:`FileNotFoundError`; a file that exists but
cannot be decoded raises :class:`MediaError` (a ``ValueError``); an image over the
limit raises :class:`ImageTooLargeError` (a :class:`MediaError`). Each message names
the file.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageTooLargeError",
    "MediaError",
    "VideoInfo",
    "image_size",
    "iterate_video",
    "read_image",
    "read_video_info",
]

DEFAULT_MAX_PIXELS = 2**28
"""Largest image (width × height) :func:`read_image` decodes by default (≈ 268 MP)."""


class MediaError(ValueError):
    """A file exists but is not a readable image or video; the message names it."""


class ImageTooLargeError(MediaError):
    """An image's header declares more pixels than the ``max_pixels`` limit allows."""


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not path.is_file():
        raise MediaError(f"{path}: not a file")
    return path


def _header(path: Path) -> tuple[tuple[int, int] | None, int]:
    """``((width, height) or None, a lower bound on width × height)`` from Pillow's header parser.

    The global ``PIL.Image.MAX_IMAGE_PIXELS`` is left alone (changing it would
    disarm other threads' bomb checks): when Pillow refuses a file as a
    decompression bomb, all we learn is that it has more than twice that many pixels.
    """
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                width, height = (int(side) for side in image.size)
                return (width, height), width * height
        except Image.DecompressionBombError:
            return None, 2 * int(Image.MAX_IMAGE_PIXELS or 0) + 1
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            return None, 0


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """Width and height declared by an image file's header, without decoding the pixels.

    Args:
      path: an image file (any format Pillow identifies; the suffix is ignored).

    Returns:
      ``(width, height)`` in pixels, or ``None`` when Pillow does not recognise the
      format or refuses it as a decompression bomb (more than
      ``2 × PIL.Image.MAX_IMAGE_PIXELS`` pixels).

    Raises:
      FileNotFoundError: the file does not exist.

    Examples:
      >>> import tempfile, cv2, numpy as np
      >>> p = tempfile.mkdtemp() + "/a.png"
      >>> _ = cv2.imwrite(p, np.zeros((20, 30), np.uint8))
      >>> image_size(p)
      (30, 20)
    """
    return _header(_existing_file(path, "image"))[0]


def _to_rgb_uint8(decoded: np.ndarray) -> np.ndarray:
    """OpenCV's BGR/BGRA/grey, 8- or 16-bit → RGB uint8."""
    if decoded.dtype == np.uint16:
        decoded = (decoded >> 8).astype(np.uint8)
    elif decoded.dtype != np.uint8:
        # Float images (EXR, 32-bit TIFF) are in [0, 1] by convention.
        decoded = np.clip(np.nan_to_num(decoded.astype(np.float32)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if decoded.ndim == 2:
        return cv2.cvtColor(decoded, cv2.COLOR_GRAY2RGB)
    channels = decoded.shape[2]
    if channels == 1:
        return cv2.cvtColor(decoded[..., 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB)
    raise ValueError(f"unsupported channel count {channels}")


def read_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB ``uint8``, whatever its format, bit depth or channels.

    The format is recognised from the bytes (OpenCV's ``imdecode``), so a file with
    the wrong suffix still loads. Greyscale becomes three equal channels, alpha is
    dropped, 16-bit samples keep their top 8 bits. A truncated or corrupt file is an
    error, never a partially grey image.

    Args:
      path: the image file.
      max_pixels: refuse images whose header declares more than this many pixels
        (width × height) before decoding them; ``None`` for no limit. Default
        :data:`DEFAULT_MAX_PIXELS`.

    Returns:
      ``(H, W, 3) uint8`` RGB pixels, origin top-left.

    Raises:
      FileNotFoundError: the file does not exist.
      ImageTooLargeError: the image has more than ``max_pixels`` pixels.
      MediaError: the file is empty, truncated, corrupt or not an image.

    Examples:
      >>> import tempfile, cv2, numpy as np
      >>> p = tempfile.mkdtemp() + "/grey.jpg"
      >>> _ = cv2.imwrite(p, np.full((4, 5), 200, np.uint8))
      >>> image = read_image(p)
      >>> image.shape, image.dtype.name
      ((4, 5, 3), 'uint8')
    """
    path = _existing_file(path, "image")
    if max_pixels is not None:
        # Refuse on the header alone, before OpenCV allocates the pixels. Formats Pillow
        # cannot parse (and bombs above Pillow's own limit when max_pixels is higher
        # still) are checked after decoding; OpenCV itself refuses more than 2³⁰ pixels.
        size, at_least = _header(path)
        if at_least > max_pixels:
            declared = f"{size[0]}×{size[1]} = {at_least:,}" if size else f"more than {at_least - 1:,}"
            raise ImageTooLargeError(
                f"{path}: image is {declared} pixels, more than max_pixels={max_pixels:,}; "
                "pass a larger max_pixels (or None) to read it anyway"
            )
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise MediaError(f"{path}: empty file, not an image")
    # IMREAD_UNCHANGED keeps 16-bit depth and alpha so the conversion below is ours;
    # IMREAD_COLOR would also apply EXIF orientation, which landmark files do not.
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.size == 0:
        raise MediaError(f"{path}: cannot decode the file as an image (corrupt, truncated or unsupported format)")
    if max_pixels is not None and decoded.shape[0] * decoded.shape[1] > max_pixels:
        raise ImageTooLargeError(
            f"{path}: image is {decoded.shape[1]}×{decoded.shape[0]} pixels, more than max_pixels={max_pixels:,}"
        )
    try:
        return np.ascontiguousarray(_to_rgb_uint8(decoded))
    except (ValueError, cv2.error) as error:
        raise MediaError(f"{path}: {error}") from error


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What a video container says about its frames.

    Attributes:
      path: the file.
      fps: nominal frames per second (the average for variable-frame-rate files;
        0 when the container does not say).
      frame_count: number of frames the container declares (an estimate for some
        formats; the frames actually decodable may be fewer).
      width, height: frame size, pixels.
    """

    path: str
    fps: float
    frame_count: int
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        """``frame_count / fps`` in seconds (0 when the frame rate is unknown)."""
        return self.frame_count / self.fps if self.fps > 0 else 0.0


def _open_capture(path: Path) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        capture.release()
        # Fall back to whatever backend OpenCV has (e.g. a build without FFmpeg).
        capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise MediaError(f"{path}: cannot open the file as a video (corrupt, truncated or unsupported format)")
    return capture


def _info(path: Path, capture: cv2.VideoCapture) -> VideoInfo:
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    return VideoInfo(
        path=str(path),
        fps=fps if np.isfinite(fps) and fps > 0 else 0.0,
        frame_count=max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0),
        width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
        height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
    )


def read_video_info(path: str | os.PathLike) -> VideoInfo:
    """Frame rate, frame count and size of a video, checking that a first frame decodes.

    Args:
      path: a video file (any container/codec OpenCV's FFmpeg backend reads).

    Returns:
      :class:`VideoInfo`.

    Raises:
      FileNotFoundError: the file does not exist.
      MediaError: the file cannot be opened as a video or holds no decodable frame.

    Examples:
      >>> import tempfile, cv2, numpy as np
      >>> p = tempfile.mkdtemp() + "/v.avi"
      >>> w = cv2.VideoWriter(p, cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
      >>> for _ in range(3): _ = w.write(np.zeros((24, 32, 3), np.uint8))
      >>> w.release()
      >>> info = read_video_info(p)
      >>> (info.width, info.height, info.frame_count, info.fps)
      (32, 24, 3, 10.0)
    """
    path = _existing_file(path, "video")
    capture = _open_capture(path)
    try:
        info = _info(path, capture)
        if not capture.grab():
            raise MediaError(f"{path}: the video holds no decodable frame")
        return info
    finally:
        capture.release()


def iterate_video(
    path: str | os.PathLike, *, stride: int = 1, max_frames: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Stream a video's frames as RGB, one at a time.

    Frames skipped by the stride are only demuxed and decoded (``grab``), not
    converted, so a stride of ``s`` costs a little more than ``1/s`` of a full pass.
    Only one frame is held at a time. The file is opened (and errors raised) at the
    first ``next()``.

    Args:
      path: a video file.
      stride: yield frames ``0, stride, 2·stride, ...`` (≥ 1).
      max_frames: stop after yielding this many frames (``None``: all).

    Yields:
      ``(frame_index, frame)``: the 0-based index of the frame in the file and its
      ``(H, W, 3) uint8`` RGB pixels.

    Raises:
      FileNotFoundError: the file does not exist.
      MediaError: the file cannot be opened as a video or holds no decodable frame.
      ValueError: ``stride < 1`` or ``max_frames < 0``.

    Examples:
      >>> import tempfile, cv2, numpy as np
      >>> p = tempfile.mkdtemp() + "/v.avi"
      >>> w = cv2.VideoWriter(p, cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
      >>> for k in range(7): _ = w.write(np.full((24, 32, 3), 30 * k, np.uint8))
      >>> w.release()
      >>> [(index, frame.shape) for index, frame in iterate_video(p, stride=3)]
      [(0, (24, 32, 3)), (3, (24, 32, 3)), (6, (24, 32, 3))]
    """
    if not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride: must be a positive int, got {stride!r}")
    if max_frames is not None and (not isinstance(max_frames, (int, np.integer)) or max_frames < 0):
        raise ValueError(f"max_frames: must be a non-negative int or None, got {max_frames!r}")
    return _frames(_existing_file(path, "video"), int(stride), max_frames)


def _frames(path: Path, stride: int, max_frames: int | None) -> Iterator[tuple[int, np.ndarray]]:
    capture = _open_capture(path)
    try:
        index = 0
        yielded = 0
        while max_frames is None or yielded < max_frames:
            if not capture.grab():
                break
            if index % stride == 0:
                ok, frame = capture.retrieve()
                if not ok or frame is None:
                    break
                yield index, np.ascontiguousarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                yielded += 1
            index += 1
        if index == 0 and (max_frames is None or max_frames > 0):
            raise MediaError(f"{path}: the video holds no decodable frame")
    finally:
        capture.release()
