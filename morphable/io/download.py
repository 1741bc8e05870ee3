"""Verified, atomic downloads into the user cache."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path
from typing import Callable

__all__ = ["download_file", "sha256_of"]


def sha256_of(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    url: str,
    destination: str | os.PathLike,
    *,
    sha256: str | None = None,
    opener: Callable = urllib.request.urlopen,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``destination`` atomically.

    The bytes go to ``destination + ".part"`` in the same folder, hashed while
    written; only a complete download (matching ``sha256`` when given) is
    renamed into place, so a failed or interrupted download never leaves a
    file a later run would trust.

    Args:
      url: any URL ``opener`` understands (``https://``, ``file://``).
      destination: final file path; parent folders are created.
      sha256: expected hex digest, or ``None`` to skip the check.
      opener: callable returning a file-like response (injectable for tests).
      progress: show a progress bar on stderr.

    Returns:
      ``destination`` as a :class:`~pathlib.Path`.

    Raises:
      OSError: when the download fails; ValueError: on a digest mismatch.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    digest = hashlib.sha256()
    try:
        with opener(url) as response, open(partial, "wb") as out:
            total = int(getattr(response, "headers", {}).get("Content-Length", 0) or 0)
            bar = _progress_bar(total, destination.name) if progress else None
            while True:
                chunk = response.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise ValueError(
                f"download of {url} has SHA-256 {digest.hexdigest()}, expected {sha256}; file discarded"
            )
        os.replace(partial, destination)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return destination


def _progress_bar(total: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total or None, unit="B", unit_scale=True, desc=f"downloading {name}", leave=False)

