"""How ``treeline model list|show`` render the registry: rows of the model table, a version's detail
(signature, tags, lineage chain, metrics per device class, partitions), and the progress bar of
uploads and downloads. Pure functions of the documents the root answered, except the lineage walk,
which asks the client for each ancestor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from treeline_cli.output import Column, Output
from treeline_cli.views import age
from treeline_common.errors import NotFound

Doc = dict[str, Any]
LINEAGE_MAX = 32  # ancestors shown; a longer chain ends with "..."
CHUNK = 1 << 16
LATENCY_PREFIX = "latency/"

MODEL_COLUMNS = (
    Column("NAME", lambda m: m.get("name")),
    Column("VERSIONS", lambda m: m.get("versions")),
    Column("ALIASES", lambda m: _pairs(m.get("aliases") or {}, sep=",")),
    Column("LATEST", lambda m: m.get("latest_version")),
    Column("SIZE", lambda m: megabytes(m.get("size"))),
)

PARTITION_COLUMNS = (
    Column("STAGE", lambda p: p.get("stage")),
    Column("OPS", lambda p: "{}..{}".format(*p["ops"]) if p.get("ops") else "-"),
    Column("SHA256", lambda p: str(p.get("sha256", ""))[:12]),
    Column("FLOPS", lambda p: p.get("flops")),
    Column("PARAM_BYTES", lambda p: p.get("param_bytes")),
    Column("CUT_BYTES", lambda p: p.get("cut_bytes")),
    Column("DEPLOYMENTS", lambda p: ",".join(p.get("deployments") or []) or "-"),
)


def megabytes(size: Any) -> str:
    return "-" if size is None else f"{int(size) / 1e6:.2f} MB"


def model_row(model: Doc, versions: list[Doc]) -> Doc:
    """One line of ``model list``: the model with its version count and its latest version's size."""
    latest = next((v for v in versions if v.get("version") == model.get("latest_version")), None)
    return {**model, "versions": len(versions), "size": (latest or {}).get("size")}


def lineage_chain(doc: Doc, fetch: Callable[[str, int], Doc]) -> list[Doc]:
    """The ancestors of ``doc``, parent first, up to the root model: ``{name, version, operation,
    parameters, dataset}`` (``operation`` and the rest: how the CHILD was made from it), or
    ``missing: True`` for a parent that was deleted (the walk stops there)."""
    chain: list[Doc] = []
    current = doc
    while len(chain) < LINEAGE_MAX:
        lineage = current.get("lineage") or {}
        parent = lineage.get("parent")
        if not parent:
            break
        link = {"name": parent.get("name"), "version": parent.get("version"),
                "operation": lineage.get("operation"), "parameters": lineage.get("parameters") or {},
                "dataset": lineage.get("dataset") or ""}
        try:
            current = fetch(str(parent.get("name")), int(parent.get("version") or 0))
        except NotFound:
            chain.append({**link, "missing": True})
            break
        chain.append(link)
    return chain


def _signature(tensors: list[Doc]) -> str:
    return ", ".join(f"{t.get('name')} {t.get('dtype')} {list(t.get('shape') or [])}" for t in tensors) or "-"


def _pairs(values: Doc, sep: str = ", ") -> str:
    return sep.join(f"{k}={v}" for k, v in sorted(values.items())) or "-"


def _lineage_text(doc: Doc, chain: list[Doc]) -> str:
    if not chain:
        return "- (a root model)"
    parts = [f"{doc.get('name')}:{doc.get('version')}"]
    for link in chain:
        params = f"({_pairs(link['parameters'])})" if link.get("parameters") else ""
        data = f" on {link['dataset']}" if link.get("dataset") else ""
        gone = " (deleted)" if link.get("missing") else ""
        parent = f"{link.get('name')}:{link.get('version')}"
        parts.append(f"{link.get('operation')}{params}{data} of {parent}{gone}")
    return " <- ".join(parts)


def latency_rows(metrics: Doc) -> tuple[list[Doc], list[str]]:
    """``latency/<class>`` metrics as rows ``{device_class, field: value}`` and the field names."""
    rows, fields = [], []
    for key, values in sorted(metrics.items()):
        if key.startswith(LATENCY_PREFIX) and isinstance(values, dict):
            rows.append({"device_class": key[len(LATENCY_PREFIX):], **values})
            fields += [f for f in values if f not in fields]
    return rows, fields


def render_version(out: Output, doc: Doc, chain: list[Doc]) -> None:
    """``model show`` as text."""
    aliases = ", ".join(doc.get("aliases") or []) or "-"
    signature = doc.get("signature") or {}
    out.line(f"{doc.get('name')}:{doc.get('version')}")
    for label, value in (("sha256", doc.get("sha256")), ("size", megabytes(doc.get("size"))),
                         ("created", age(doc.get("created_at"))),
                         ("description", doc.get("description") or "-"),
                         ("inputs", _signature(signature.get("inputs") or [])),
                         ("outputs", _signature(signature.get("outputs") or [])),
                         ("aliases", aliases), ("tags", _pairs(doc.get("tags") or {})),
                         ("lineage", _lineage_text(doc, chain))):
        out.line(f"  {label:<12}{value}")
    metrics = doc.get("metrics") or {}
    others = {k: v for k, v in sorted(metrics.items()) if not k.startswith(LATENCY_PREFIX)}
    for key, values in others.items():
        out.line(f"  {key:<12}{_pairs(values) if isinstance(values, dict) else values}")
    rows, fields = latency_rows(metrics)
    if rows:
        out.line("metrics per device class:")
        columns = [Column("DEVICE_CLASS", lambda r: r.get("device_class")),
                   *(Column(f.upper(), _cell(f)) for f in fields)]
        out.table(rows, columns)
    partitions = doc.get("partitions") or []
    if partitions:
        out.line(f"partitions ({len(partitions)}):")
        out.table(partitions, PARTITION_COLUMNS)


def _cell(field: str) -> Callable[[Doc], Any]:
    return lambda row: row.get(field, "-")


@contextlib.contextmanager
def transfer_bar(out: Output, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr for a transfer of ``total`` bytes on a terminal; elsewhere
    :meth:`Output.step`'s line once the transfer has taken a second. Yields ``advance(n_bytes)``."""
    if not out.err.is_terminal:
        with out.step(description):
            yield lambda n: None
        return
    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), console=out.err, transient=True)
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def chunks_of(data: bytes | Path, advance: Callable[[int], None]) -> Iterator[bytes]:
    """The bytes (or the file's bytes, read as they are sent) in chunks, calling ``advance``."""
    if isinstance(data, Path):
        with data.open("rb") as stream:
            while chunk := stream.read(CHUNK):
                advance(len(chunk))
                yield chunk
        return
    for start in range(0, len(data), CHUNK):
        chunk = data[start:start + CHUNK]
        advance(len(chunk))
        yield chunk
