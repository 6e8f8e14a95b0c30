"""A model's declared inputs (the SLA's ``model.inputs``) and their check against its signature.

The SLA may declare the model's inputs as a list ``inputs: [{name, shape, dtype}]`` or, as
before, one ``input: {name, shape, dtype}``; both given must agree (one input, equal). The
declaration is checked against the model's signature (``{inputs: [{name, dtype, shape}]}``
as the root's registry stores it, :mod:`root_orchestrator.onnx_signature`) by
:func:`signature_problems`, pure, so the cluster (job arrival, dry run) and the root (apply)
give the same answer:

- every declared name is a model input, and every model input is declared;
- ranks agree; a fixed model dimension must equal the SLA's value; a symbolic dimension
  (``"seq"``, ``"N"``) is *bound* by the SLA's value, and one symbol bound to two values
  across inputs is a mismatch; an unknown dimension (``None``) takes any value;
- dtypes agree (a signature without a dtype is not checked).

Problems are ``{path, message}`` with paths relative to the model block's parent, e.g.
``model.inputs[1].dtype: model expects int64, SLA says float32``; callers prefix them
(``microservice.``, ``applications[0].microservices[1].``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

INPUT_DTYPES = ("float32", "float16", "int64", "int32", "uint8")


@dataclass(frozen=True)
class InputSpec:
    """One declared model input: its graph name, concrete shape (ints >= 1) and numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        """``{name, shape, dtype}`` as the placement's ``inputs`` carries it."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> InputSpec:
        """From a validated ``{name, shape, dtype}`` (the schema has checked the types)."""
        return cls(name=str(doc["name"]), shape=tuple(int(d) for d in doc["shape"]), dtype=str(doc["dtype"]))


def declared_inputs(model: Mapping[str, Any]) -> tuple[tuple[InputSpec, ...] | None, str | None]:
    """``(inputs, key)`` of a validated model block: ``key`` is ``"inputs"`` or ``"input"`` (the
    field they came from, for error paths), ``(None, None)`` when the SLA declares none."""
    if isinstance(model.get("inputs"), list):
        return tuple(InputSpec.from_dict(i) for i in model["inputs"]), "inputs"
    if isinstance(model.get("input"), Mapping):
        return (InputSpec.from_dict(model["input"]),), "input"
    return None, None


def input_path(key: str | None, index: int) -> str:
    """``model.inputs[1]`` or, for the single ``input`` form, ``model.input``."""
    return "model.input" if key == "input" else f"model.inputs[{index}]"


def declaration_problems(model: Mapping[str, Any]) -> Iterator[tuple[list[str | int], str]]:
    """SLA-only rules (no signature): unique input names, ``input`` and ``inputs`` consistent.

    Yields ``(path parts relative to the model block, message)``; reads defensively (the
    schema has already reported wrong types).
    """
    inputs = model.get("inputs")
    if isinstance(inputs, list):
        first: dict[str, int] = {}
        for index, item in enumerate(inputs):
            name = item.get("name") if isinstance(item, Mapping) else None
            if not isinstance(name, str):
                continue
            if name in first:
                yield ["inputs", index, "name"], (
                    f"duplicate input name {name!r} (also at inputs[{first[name]}])")
            else:
                first[name] = index
    single = model.get("input")
    if isinstance(inputs, list) and isinstance(single, Mapping) and (
            len(inputs) != 1 or _as_dict(inputs[0]) != _as_dict(single)):
        yield ["input"], "conflicts with model.inputs: give one of them (inputs is the list form)"


def _as_dict(value: Any) -> Any:
    return {k: list(v) if isinstance(v, list | tuple) else v for k, v in value.items()} \
        if isinstance(value, Mapping) else value


def _shape_text(shape: Sequence[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def signature_problems(declared: Sequence[InputSpec], key: str | None,
                       signature: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """Where ``declared`` (the SLA's inputs) disagree with ``signature`` (see the module doc).

    ``[]`` when they agree, when nothing is declared or when the signature is unknown (None
    or without ``inputs``: nothing to compare with). Never raises on a malformed signature:
    entries that are not objects are skipped.
    """
    sig_inputs = [i for i in (signature or {}).get("inputs") or [] if isinstance(i, Mapping)]
    if not declared or not sig_inputs:
        return []
    by_name = {str(i.get("name")): i for i in sig_inputs}
    problems: list[dict[str, str]] = []
    bound: dict[str, tuple[int, str]] = {}  # symbol -> (value, where it was bound)
    for index, spec in enumerate(declared):
        path = input_path(key, index)
        model_input = by_name.get(spec.name)
        if model_input is None:
            problems.append({"path": f"{path}.name", "message": (
                f"model has no input {spec.name!r}; its inputs are {sorted(by_name)}")})
            continue
        problems.extend(_shape_problems(spec, model_input.get("shape"), path, bound))
        dtype = model_input.get("dtype")
        if dtype is not None and str(dtype) != spec.dtype:
            problems.append({"path": f"{path}.dtype",
                             "message": f"model expects {dtype}, SLA says {spec.dtype}"})
    names = {s.name for s in declared}
    for name, model_input in by_name.items():
        if name not in names:
            shape = model_input.get("shape")
            shown = _shape_text(shape) if isinstance(shape, list) else "?"
            problems.append({"path": "model.inputs" if key == "inputs" else "model.input", "message": (
                f"missing model input {name!r} ({model_input.get('dtype')} {shown}): "
                "declare every input of the model in model.inputs")})
    return problems


def _shape_problems(spec: InputSpec, model_shape: Any, path: str,
                    bound: dict[str, tuple[int, str]]) -> Iterator[dict[str, str]]:
    if not isinstance(model_shape, list):  # rank unknown: any shape
        return
    if len(model_shape) != len(spec.shape):
        yield {"path": f"{path}.shape", "message": (
            f"model expects rank {len(model_shape)} {_shape_text(model_shape)}, "
            f"SLA says rank {len(spec.shape)} {list(spec.shape)}")}
        return
    for axis, (want, got) in enumerate(zip(model_shape, spec.shape, strict=True)):
        where = f"{path}.shape[{axis}]"
        if isinstance(want, int) and not isinstance(want, bool):
            if want != got:
                yield {"path": where, "message": (
                    f"model expects {want} (shape {_shape_text(model_shape)}), SLA says {got}")}
        elif isinstance(want, str):
            first = bound.setdefault(want, (got, where))
            if first[0] != got:
                yield {"path": where, "message": (
                    f"model dimension {want!r} is bound to {first[0]} by {first[1]}, SLA says {got}")}


def signature_inputs(signature: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The signature's inputs as placement specs ``{name, shape, dtype}`` (what the cluster
    serves when the SLA declares none): symbolic and unknown dims become 1 (batch-1 serving),
    an unknown dtype float32."""
    specs = []
    for item in (signature or {}).get("inputs") or []:
        if not isinstance(item, Mapping) or not item.get("name"):
            continue
        raw = item.get("shape")
        shape = raw if isinstance(raw, list) else []
        specs.append({"name": str(item["name"]),
                      "shape": [d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else 1
                                for d in shape],
                      "dtype": str(item.get("dtype") or "float32")})
    return specs
