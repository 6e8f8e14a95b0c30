"""The cluster's parsed models: fetched once, bound to the SLA's input shapes, analysed once.

A model is kept by its registry digest *and* the input shapes it was bound to
(:func:`ml_scheduler.binding.bind_input_shapes`): a model with symbolic dimensions
(``[N, 3, H, W]``) deployed with a 224x224 SLA input is analysed, profiled and cut as that
concrete model, so predicted FLOPs, cut bytes and op times are those of what will run.

A bound model is a different artifact: :class:`LoadedModel` carries its own digest and bytes,
which the deployer puts in the artifact cache for nodes to profile, and its profiles are kept
under their own key (:func:`profile_key`: ``<device class>.b<12 hex of the bound digest>``,
which the root's device-class pattern accepts) next to the unbound model's, so profiles of one
shape are never used to plan another.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from ml_scheduler.binding import bind_input_shapes, complete_outputs, needs_binding, outputs_incomplete
from ml_scheduler.graph import ModelGraph, analyze_model

Bound = tuple[tuple[str, tuple[int, ...]], ...]  # ((input name, shape), ...) sorted by name
BOUND_MARK = ".b"  # profile keys of a bound model: <device class>.b<digest prefix>


@dataclass(frozen=True)
class LoadedModel:
    """A parsed (and possibly bound) model and its analysis.

    ``sha256`` is the digest of what nodes profile and what partitions are cut from: the
    registry's digest when nothing was bound, else that of ``data`` (the bound model's bytes).
    """

    model: onnx.ModelProto
    graph: ModelGraph
    sha256: str
    data: bytes | None = None  # the bound (or output-completed) model's bytes; None: the registry's as is
    bound_shapes: Bound = ()

    @property
    def bound(self) -> bool:
        return self.data is not None


def declared_shapes(input_specs: Sequence[Mapping[str, Any]]) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of the SLA's input specs that give a full positive shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in input_specs:
        shape = spec.get("shape")
        if isinstance(shape, list | tuple) and shape and all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            shapes[str(spec.get("name"))] = tuple(int(d) for d in shape)
    return shapes


def profile_key(device_class: str, loaded: LoadedModel) -> str:
    """Where a profile of ``loaded`` on ``device_class`` is kept (see the module docstring)."""
    return f"{device_class}{BOUND_MARK}{loaded.sha256[:12]}" if loaded.bound else device_class


def profiles_for(loaded: LoadedModel, stored: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The stored profiles that measured ``loaded`` (by device class): for a bound model the
    entries under its own keys, else the plain device-class entries."""
    if not loaded.bound:
        return {k: v for k, v in stored.items() if BOUND_MARK not in k}
    suffix = f"{BOUND_MARK}{loaded.sha256[:12]}"
    return {k[: -len(suffix)]: v for k, v in stored.items() if k.endswith(suffix)}


class ModelCache:
    """Parsed models and their graphs by (digest, bound shapes), so a re-plan does not download
    or analyse again, and the last op-time profiles seen per model (so a re-plan while the root
    is down still has them). Thread-safe."""

    def __init__(self, size: int = 4) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, Bound], LoadedModel] = OrderedDict()
        self._profiles: dict[str, dict[str, dict[str, Any]]] = {}

    def profiles(self, sha256: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._profiles.get(sha256, {}))

    def remember_profiles(self, sha256: str, profiles: dict[str, dict[str, Any]]) -> None:
        with self._lock:
            self._profiles.setdefault(sha256, {}).update(profiles)

    def get(self, sha256: str, load: Callable[[], bytes],
            shapes: Mapping[str, Sequence[int]] | None = None) -> LoadedModel:
        """The model of digest ``sha256`` (bytes from ``load`` on a miss), bound to ``shapes``
        when it has symbolic input dimensions. Raises :class:`ml_scheduler.binding.BindingError`
        when a shape does not fit the model, and onnx's errors for bytes that do not parse."""
        wanted = tuple(sorted((name, tuple(int(d) for d in dims)) for name, dims in (shapes or {}).items()))
        key = (sha256, wanted)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        model = onnx.load_model_from_string(load())
        rewritten: onnx.ModelProto | None = None
        if wanted and needs_binding(model):
            rewritten = bind_input_shapes(model, dict(wanted))
        elif outputs_incomplete(model):  # an output without a declared shape: cut partitions need one
            rewritten = onnx.ModelProto()
            rewritten.CopyFrom(model)
            complete_outputs(rewritten)
        if rewritten is not None:
            data = rewritten.SerializeToString()
            item = LoadedModel(rewritten, analyze_model(rewritten), hashlib.sha256(data).hexdigest(), data,
                               wanted)
        else:
            item = LoadedModel(model, analyze_model(model), sha256)
        with self._lock:
            self._items[key] = item
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return item
