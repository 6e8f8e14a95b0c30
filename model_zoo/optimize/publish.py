"""Each measured variant as a registry version: registered, then its lineage and metrics patched.

Decide, then commit: every ``PATCH`` body is built and validated against the registry's own
contract (:class:`treeline_common.registry.VersionUpdate`) before the first upload, so a bad
document fails before any version exists. Then, per derived variant, ``register_model`` (a new
immutable version of the same model name) and ``update_model_version`` with:

- ``lineage``: parent ``{name, version}`` (the version the pipeline started from), operation,
  parameters, data set, tool versions;
- ``metrics``: ``quality`` (``accuracy`` or ``agreement`` with its ``dataset``) and
  ``latency/<this CPU's device class>`` (``p50_ms``, measured here; emulated classes are scaled
  figures and stay out of the registry);
- ``tags``: ``optimize.variant``, ``optimize.accuracy_floor`` and, where the variant won,
  ``optimize.chosen_for`` (the device classes it was chosen for, comma-separated).

The starting version gets the same metrics and tags (it was measured alongside), no lineage.
A failure part-way leaves the versions registered so far in place (versions are immutable and
the lineage says what each is); the error says which variant failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from model_zoo.optimize.pipeline import BASELINE, Measured
from treeline_common.registry import VersionUpdate


class RegistryClient(Protocol):
    """What publishing needs of :class:`treeline_cli.root_client.RootClient`."""

    def register_model(self, name: str, onnx_bytes: bytes, description: str = "",
                       alias: str | None = None,
                       content_type: str = "application/octet-stream") -> dict[str, Any]: ...

    def update_model_version(self, name: str, ref: str | int, **fields: Any) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Published:
    """One variant as registered: its version and the figures sent with it."""

    variant: str
    version: int
    size_bytes: int
    quality: float
    p50_ms: float
    chosen_for: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "version": self.version, "size_bytes": self.size_bytes,
                "quality": self.quality, "p50_ms": self.p50_ms, "chosen_for": list(self.chosen_for)}


def chosen_for(measured: Measured, variant: str) -> tuple[str, ...]:
    """The device classes whose choice is ``variant``, in the order they were decided."""
    return tuple(dc for dc, choice in measured.choices.items() if choice.variant == variant)


def version_update(measured: Measured, variant: str, parent: dict[str, Any] | None) -> dict[str, Any]:
    """The validated PATCH body for ``variant`` (lineage only when ``parent`` is given).

    Raises :class:`treeline_common.errors.InvalidInput` naming every field the registry would refuse.
    """
    tags = {"optimize.variant": variant, "optimize.accuracy_floor": f"{measured.accuracy_floor:.4f}"}
    classes = chosen_for(measured, variant)
    if classes:
        tags["optimize.chosen_for"] = ",".join(classes)
    body: dict[str, Any] = {"metrics": measured.metrics(variant), "tags": tags}
    if parent is not None:
        body["lineage"] = measured.lineage(variant, parent)
    VersionUpdate.from_body(body)
    return body


def publish(client: RegistryClient, measured: Measured, name: str, base_version: int) -> list[Published]:
    """Register every variant but the baseline as a new version of ``name``, derived from
    ``base_version``; patch all of them (the baseline too). Returns them, baseline first."""
    parent = {"name": name, "version": base_version}
    bodies = {v: version_update(measured, v, None if v == BASELINE else parent) for v in measured.variants}
    versions = {BASELINE: base_version}
    client.update_model_version(name, base_version, **bodies[BASELINE])
    for variant_name, variant in measured.variants.items():
        if variant_name == BASELINE:
            continue
        description = f"{variant.operation} of {name}:{base_version} (treeline model optimize)"
        document = client.register_model(name, variant.onnx_bytes, description=description)
        versions[variant_name] = int(document["version"])
        client.update_model_version(name, versions[variant_name], **bodies[variant_name])
    return [Published(v, versions[v], measured.variants[v].size_bytes, measured.quality[v],
                      measured.latency.p50_ms[v], chosen_for(measured, v)) for v in measured.variants]
