"""What an uploaded model must be before it becomes a version: one self-contained ONNX file whose
outputs have known types (the registry's intake; issue "any real model in").

- **External data.** torch's dynamo exporter writes weights to ``<name>.onnx.data`` by default.
  Such a model is uploaded as one archive (tar, tar.gz or zip: ``Content-Type:
  application/x-tar``, ``application/gzip`` or ``application/zip``, or sniffed from the bytes)
  holding exactly one ``.onnx`` file and the data files it names. :func:`unpack_archive` reads it
  safely (no absolute paths, no ``..``, no links, at most :data:`MAX_MEMBERS` members, the
  upload's size limit on the unpacked total), loads the model with its external data and stores
  it as one self-contained file, so analysis, extraction and transfer see an ordinary model.
  Protocol buffers cannot hold 2 GiB: a bigger model is refused with 413 naming the limit. A
  raw ``.onnx`` that names external data is refused with 400 saying to send the archive
  (``treeline model register`` packs it by itself: :mod:`treeline_cli.model_files`).
- **Outputs.** onnxruntime runs a model whose graph outputs declare no type or shape, but a
  partition cut from it is refused by ``onnx.checker``. :func:`complete_signature` infers them
  (:func:`ml_scheduler.binding.complete_outputs`); an output whose element type cannot be
  inferred is 400 naming ``outputs[i].dtype``.

Errors are :class:`~treeline_common.errors.InvalidInput` (400) or ``PayloadTooLarge`` (413),
each naming the field; nothing here runs a model.
"""

from __future__ import annotations

import hashlib
import logging
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import onnx

from ml_scheduler.binding import BindingError, complete_outputs
from root_orchestrator.onnx_signature import value_info
from treeline_common.errors import InvalidInput
from treeline_common.http import too_large

log = logging.getLogger(__name__)

ARCHIVE_TYPES = ("application/x-tar", "application/gzip", "application/x-gzip", "application/zip")
MAX_MEMBERS = 64
PROTOBUF_LIMIT = (2 << 30) - 1  # a serialised ModelProto must stay under 2 GiB


def _bad(message: str, path: str = "body") -> InvalidInput:
    return InvalidInput("body is not an acceptable ONNX model", [{"path": path, "message": message}])


def is_archive(path: Path, mimetype: str) -> bool:
    """Whether the spooled upload is an archive (by Content-Type, else by its first bytes)."""
    if mimetype.lower() in ARCHIVE_TYPES:
        return True
    with path.open("rb") as fh:
        head = fh.read(262)
    return head[:4] == b"PK\x03\x04" or head[:2] == b"\x1f\x8b" or head[257:262] == b"ustar"


def _safe_name(name: str) -> PurePosixPath:
    member = PurePosixPath(name)
    if member.is_absolute() or ".." in member.parts or not member.parts:
        raise _bad(f"archive member {name!r} has an unsafe path")
    return member


def _extract(path: Path, into: Path, limit: int) -> list[Path]:
    """Regular files of the archive at ``path`` written under ``into``; InvalidInput / 413."""
    written: list[Path] = []
    total = 0

    def write(name: str, size: int, read: Any) -> None:
        nonlocal total
        total += size
        if total > limit:
            raise too_large(limit, "unpacked archive")
        target = into / _safe_name(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read())
        written.append(target)

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zipped:
            infos = [m for m in zipped.infolist() if not m.is_dir()]
            if len(infos) > MAX_MEMBERS:
                raise _bad(f"archive has {len(infos)} files; at most {MAX_MEMBERS}")
            for info in infos:
                write(info.filename, info.file_size, lambda i=info: zipped.read(i))
        return written
    try:
        with tarfile.open(path, "r:*") as archive:
            members = archive.getmembers()
            if len(members) > MAX_MEMBERS:
                raise _bad(f"archive has {len(members)} members; at most {MAX_MEMBERS}")
            for tar_member in members:
                if tar_member.isdir():
                    continue
                if not tar_member.isfile():
                    raise _bad(f"archive member {tar_member.name!r} is not a regular file")
                handle = archive.extractfile(tar_member)
                assert handle is not None
                write(tar_member.name, tar_member.size, handle.read)
    except tarfile.TarError as exc:
        raise _bad(f"not a readable tar or zip archive: {exc}") from None
    return written


def unpack_archive(path: Path, staging: Path, limit: int) -> tuple[Path, str, int]:
    """The archive's model as one self-contained ONNX file in ``staging``: ``(path, sha256, size)``.

    The caller deletes the returned file. InvalidInput naming ``body`` for an archive without
    exactly one ``.onnx``, a missing data file or an unloadable model; 413 past ``limit`` or 2 GiB.
    """
    staging.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=staging, prefix="archive-") as tmp:
        files = _extract(path, Path(tmp), limit)
        models = [f for f in files if f.suffix == ".onnx"]
        if len(models) != 1:
            names = sorted(str(f.relative_to(tmp)) for f in models)
            raise _bad(f"the archive must hold exactly one .onnx file, found {len(models)}: {names}")
        try:
            header = onnx.load(str(models[0]), load_external_data=False)
            for location in sorted(external_locations(header)):
                if not (models[0].parent / _safe_name(location)).is_file():
                    raise _bad(f"{models[0].name} names external data {location!r}, which the archive lacks")
            model = onnx.load(str(models[0]), load_external_data=True)
        except InvalidInput:
            raise
        except Exception as exc:  # noqa: BLE001 - protobuf and onnx raise several kinds
            raise _bad(f"cannot load {models[0].name} with its external data: {type(exc).__name__}: {exc}") \
                from None
        if model.ByteSize() > PROTOBUF_LIMIT:
            raise too_large(PROTOBUF_LIMIT, "model with its weights inlined (models over 2 GiB are not "
                                            "supported yet)")
        data = model.SerializeToString()
    fd, name = tempfile.mkstemp(dir=staging, prefix="model-")
    with open(fd, "wb") as out:
        out.write(data)
    log.info("unpacked an archive into one %d-byte model", len(data))
    return Path(name), hashlib.sha256(data).hexdigest(), len(data)


def external_locations(model: onnx.ModelProto) -> set[str]:
    """The external data files (relative paths) the initializers of ``model`` name."""
    return {entry.value for tensor in model.graph.initializer
            if tensor.data_location == onnx.TensorProto.EXTERNAL
            for entry in tensor.external_data if entry.key == "location"}


def complete_signature(path: Path, signature: dict[str, Any]) -> dict[str, Any]:
    """``signature`` with outputs that lack a type or shape inferred from the model at ``path``;
    InvalidInput naming ``outputs[i].dtype`` when an element type cannot be inferred. Only a model
    with such outputs is read whole (without external data)."""
    outputs = signature.get("outputs") or []
    if all(o.get("dtype") and o.get("shape") is not None for o in outputs):
        return signature
    model = onnx.load(str(path), load_external_data=False)
    try:
        complete_outputs(model)
    except BindingError as exc:
        raise _bad(exc.message, exc.path) from None
    return {**signature, "outputs": [value_info(o) for o in model.graph.output]}
