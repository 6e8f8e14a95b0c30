"""model_zoo.optimize.publish against a fake registry: decide (validate every body), then commit."""

from __future__ import annotations

from typing import Any

import pytest

from model_zoo.optimize.choose import Candidate, DeviceClass, choose_per_device_class
from model_zoo.optimize.measure import LatencyResult
from model_zoo.optimize.pipeline import Measured, Variant
from model_zoo.optimize.publish import publish
from treeline_common.errors import InvalidInput
from treeline_common.registry import VersionUpdate


class FakeRegistry:
    """Records calls; versions count up from ``next_version``."""

    def __init__(self, next_version: int = 2) -> None:
        self.next_version = next_version
        self.calls: list[tuple[str, str, Any, dict[str, Any]]] = []

    def register_model(self, name: str, onnx_bytes: bytes, description: str = "", alias: str | None = None,
                       content_type: str = "application/octet-stream") -> dict[str, Any]:
        self.calls.append(("register", name, onnx_bytes, {"description": description}))
        self.next_version += 1
        return {"name": name, "version": self.next_version - 1}

    def update_model_version(self, name: str, ref: str | int, **fields: Any) -> dict[str, Any]:
        self.calls.append(("update", name, ref, fields))
        return {"name": name, "version": ref}


def _measured(quality: dict[str, float]) -> Measured:
    variants = {"fp32": Variant("fp32", b"A" * 100, None, "train"),
                "int8": Variant("int8", b"B" * 30, "fp32", "quantize_int8_static", {"format": "QDQ"}),
                "pruned": Variant("pruned", b"C" * 50, "fp32", "prune_structured_finetune", {"amount": 0.5})}
    p50 = {"fp32": 1.0, "int8": 0.8, "pruned": 0.5}
    classes = [DeviceClass("native-x86_64", 1.0, False), DeviceClass("rpi4", 0.25, True)]
    candidates = [Candidate(n, quality[n], p50[n], v.size_bytes) for n, v in variants.items()]
    choices = choose_per_device_class(candidates, classes, baseline="fp32", accuracy_floor=0.97)
    return Measured("digits_cnn", "accuracy", "digits[test]", variants, quality,
                    LatencyResult(p50, 10, 1, 1), "native-x86_64", 0.97, choices)


def test_each_variant_is_registered_then_patched_with_a_valid_body() -> None:
    registry = FakeRegistry()
    published = publish(registry, _measured({"fp32": 0.98, "int8": 0.975, "pruned": 0.96}), "digits", 1)
    assert [(p.variant, p.version) for p in published] == [("fp32", 1), ("int8", 2), ("pruned", 3)]
    kinds = [(kind, ref if kind == "update" else None) for kind, _, ref, _ in registry.calls]
    assert kinds == [("update", 1), ("register", None), ("update", 2), ("register", None), ("update", 3)]
    updates = {ref: fields for kind, _, ref, fields in registry.calls if kind == "update"}
    for fields in updates.values():
        VersionUpdate.from_body(fields)  # what the root will check
    assert "lineage" not in updates[1]
    assert updates[2]["lineage"]["parent"] == {"name": "digits", "version": 1}
    assert updates[2]["metrics"]["latency/native-x86_64"] == {"p50_ms": 0.8}
    assert set(updates[2]["metrics"]) == {"quality", "latency/native-x86_64"}  # scaled figures stay out
    # pruned is the fastest but under the floor: int8 is chosen, on both classes
    assert updates[2]["tags"]["optimize.chosen_for"] == "native-x86_64,rpi4"
    assert "optimize.chosen_for" not in updates[3]["tags"]


def test_a_body_the_registry_would_refuse_stops_before_anything_is_registered() -> None:
    registry = FakeRegistry()
    with pytest.raises(InvalidInput) as caught:
        publish(registry, _measured({"fp32": 0.98, "int8": float("nan"), "pruned": 0.96}), "digits", 1)
    assert registry.calls == []
    assert any("metrics.quality.accuracy" in d["path"] for d in caught.value.details)
