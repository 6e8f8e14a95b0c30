"""What ``treeline model register FILE`` uploads: the ONNX bytes, or an archive of the model and
its external data files (torch's dynamo exporter writes weights to ``<name>.onnx.data``).

The root unpacks the archive into one self-contained model (:mod:`root_orchestrator.model_intake`),
so a user never re-saves an exported model by hand.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import onnx

from treeline_cli.errors import UsageError


def external_data_files(path: Path) -> list[str]:
    """The external data files (paths relative to ``path``'s folder) the model at ``path`` names."""
    model = onnx.load(str(path), load_external_data=False)
    return sorted({entry.value for tensor in model.graph.initializer
                   if tensor.data_location == onnx.TensorProto.EXTERNAL
                   for entry in tensor.external_data if entry.key == "location"})


def upload_body(path: Path) -> tuple[bytes, str]:
    """``(body, content type)`` for the model file at ``path``: the file itself, or a tar of it and
    its external data files. UsageError (one line) naming a data file that is not there."""
    try:
        files = external_data_files(path)
    except Exception:  # noqa: BLE001 - not parseable here: let the root give its reason
        files = []
    if not files:
        return path.read_bytes(), "application/octet-stream"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(str(path), arcname=path.name)
        for name in files:
            data_file = path.parent / name
            if not data_file.is_file():
                raise UsageError(f"{path.name} keeps its weights in {name}, which is not next to it",
                                 f"put {name} in {path.parent} or save the model as one file")
            archive.add(str(data_file), arcname=name)
    return buffer.getvalue(), "application/x-tar"
