"""The cluster's artifact cache: content-addressed, verified, persistent with a folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cluster_orchestrator.artifacts import ArtifactCache
from treeline_common.errors import IntegrityError, InvalidInput


@pytest.mark.parametrize("in_folder", [False, True])
def test_put_get_verify(tmp_path: Path, in_folder: bool) -> None:
    cache = ArtifactCache(tmp_path / "a" if in_folder else None)
    data = b"partition bytes"
    sha = hashlib.sha256(data).hexdigest()
    assert cache.get(sha) is None
    cache.put(sha.upper(), data)
    assert cache.get(sha) == data
    cache.put(sha, data)  # idempotent
    with pytest.raises(IntegrityError):
        cache.put(hashlib.sha256(b"other").hexdigest(), data)
    with pytest.raises(InvalidInput):
        cache.get("../../etc/passwd")


def test_a_folder_survives_a_restart(tmp_path: Path) -> None:
    data = b"x" * 1000
    sha = hashlib.sha256(data).hexdigest()
    ArtifactCache(tmp_path).put(sha, data)
    assert ArtifactCache(tmp_path).get(sha) == data
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".incoming-")]
