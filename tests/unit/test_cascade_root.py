"""The root's cascade resolution (root_orchestrator.cascade): the small model from the registry,
the threshold as given or calibrated on the digits probe set, and errors that name the field."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest

from model_zoo import digits_pair
from model_zoo.cascade_probes import digits_probe, run_model
from root_orchestrator.cascade import cascade_job
from treeline_common.cascade import cascade_accuracy
from treeline_common.errors import InvalidInput, NotFound


class FakeModels:
    def __init__(self, versions: dict[str, dict[str, Any]]) -> None:
        self.versions = versions

    def get_version(self, name: str, ref: int | str) -> dict[str, Any]:
        if name not in self.versions:
            raise NotFound(f"no model {name!r}", [{"path": "name", "message": "not registered"}])
        return self.versions[name]


class FakeArtifacts:
    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs

    def exists(self, sha256: str) -> bool:
        return sha256 in self.blobs

    def get(self, sha256: str) -> bytes:
        return self.blobs[sha256]


class FakeStores:
    def __init__(self, models: dict[str, bytes]) -> None:
        self.versions: dict[str, dict[str, Any]] = {
            n: {"name": n, "version": 1, "sha256": hashlib.sha256(b).hexdigest()} for n, b in models.items()}
        self.models = FakeModels(self.versions)
        self.artifacts = FakeArtifacts({v["sha256"]: models[n] for n, v in self.versions.items()})


@pytest.fixture(scope="module")
def pair() -> tuple[bytes, bytes]:
    return digits_pair.small_model(), digits_pair.large_model()


def _model(**cascade: Any) -> dict[str, Any]:
    return {"name": "large", "version": "latest", "cascade": {"small": "small", **cascade}}


def test_a_threshold_is_taken_as_given(pair: tuple[bytes, bytes]) -> None:
    stores = FakeStores({"small": pair[0], "large": pair[1]})
    job = cascade_job(stores, _model(threshold=0.4), stores.versions["large"])  # type: ignore[arg-type]
    assert job is not None and job.threshold == 0.4 and job.calibration is None
    assert job.small_sha256 == stores.versions["small"]["sha256"] and job.small_version == 1
    assert cascade_job(stores, {"name": "large"}, stores.versions["large"]) is None  # type: ignore[arg-type]


def test_an_accuracy_floor_is_calibrated_on_the_probe_set(pair: tuple[bytes, bytes]) -> None:
    stores = FakeStores({"small": pair[0], "large": pair[1]})
    job = cascade_job(stores, _model(accuracy_floor=0.95), stores.versions["large"])  # type: ignore[arg-type]
    assert job is not None and job.calibration is not None
    probe = digits_probe()
    small, large = run_model(pair[0], probe), run_model(pair[1], probe)
    small_right, large_right = small.top1 == probe.labels, large.top1 == probe.labels
    accuracy, share = cascade_accuracy(small.confidence, small_right, large_right, job.threshold)
    assert accuracy >= 0.95 and job.calibration["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert job.calibration["escalated_share"] == pytest.approx(share, abs=1e-6)
    lower = np.max(small.confidence[small.confidence < job.threshold])  # the next threshold down misses it
    assert cascade_accuracy(small.confidence, small_right, large_right, float(lower))[0] < 0.95


def test_errors_name_the_cascade_field(pair: tuple[bytes, bytes]) -> None:
    stores = FakeStores({"small": pair[0], "large": pair[1]})
    with pytest.raises(InvalidInput) as unmet:
        cascade_job(stores, _model(accuracy_floor=0.999), stores.versions["large"])  # type: ignore[arg-type]
    assert unmet.value.details[0]["path"] == "model.cascade.accuracy_floor"
    assert "large model alone scores" in unmet.value.details[0]["message"]
    with pytest.raises(NotFound) as missing:
        cascade_job(stores, _model(small="nothing", threshold=0.5), stores.versions["large"])  # type: ignore[arg-type]
    assert missing.value.details[0]["path"] == "model.cascade.small"
    with pytest.raises(InvalidInput) as both:
        cascade_job(stores, _model(threshold=0.5, accuracy_floor=0.9), stores.versions["large"])  # type: ignore[arg-type]
    assert both.value.details[0]["path"] == "model.cascade"
