"""Verified atomic downloads."""

from __future__ import annotations

import hashlib

import pytest

from morphable.io.download import download_file, sha256_of


def test_download_verifies_and_renames(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"x" * 3_000_000)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    target = download_file(source.as_uri(), tmp_path / "out" / "file.bin", sha256=digest, progress=False)
    assert target.read_bytes() == source.read_bytes()
    assert sha256_of(target) == digest
    assert not list((tmp_path / "out").glob("*.part"))


def test_digest_mismatch_leaves_nothing(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"payload")
    with pytest.raises(ValueError, match="SHA-256"):
        download_file(source.as_uri(), tmp_path / "out" / "file.bin", sha256="0" * 64, progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_unreachable_url(tmp_path):
    with pytest.raises(OSError):
        download_file((tmp_path / "missing.bin").as_uri(), tmp_path / "file.bin", progress=False)
    assert not (tmp_path / "file.bin").exists()
