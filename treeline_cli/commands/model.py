"""``treeline model``: register (streamed), list, show, alias (compare-and-set), delete, download
(streamed, sha256 checked) and profile; rendering lives in :mod:`treeline_cli.model_views`."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import click

import model_zoo
from treeline_cli.commands.common import output, output_option, root_client, root_options, setting, settings
from treeline_cli.errors import Failure, TreelineGroup, UsageError
from treeline_cli.model_client import NO_EXPECTATION
from treeline_cli.model_files import external_data_files, upload_body
from treeline_cli.model_views import (
    MODEL_COLUMNS,
    chunks_of,
    lineage_chain,
    model_row,
    render_version,
    transfer_bar,
)
from treeline_cli.output import Output, plural
from treeline_cli.resolve import split_model_ref
from treeline_common.errors import PayloadTooLarge

PROFILE_POLL_S = 0.5


@click.group(cls=TreelineGroup)
def model() -> None:
    """Register models in the root's registry and measure them."""


def _model_name(path: Path) -> str:
    """A registry name from a file name: ``MobileNet V2.onnx`` -> ``MobileNet_V2``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem).strip("_") or "model"


@model.command()
@click.argument("file", type=click.Path(path_type=Path), required=False)
@click.option("--builtin", metavar="NAME",
              help=f"export a built-in model: {', '.join(model_zoo.BUILTIN_MODELS)}")
@click.option("--name", metavar="NAME",
              help="registry name (default: the built-in's name or the file's stem)")
@click.option("--alias", metavar="ALIAS", help="point this alias (e.g. prod) at the new version")
@click.option("--description", default="", help="free text kept with the version")
@setting("data_dir", metavar="DIR", help="built-in exports are cached in DIR/models [env TREELINE_DATA_DIR]")
@output_option
@root_options
def register(file: Path | None, builtin: str | None, name: str | None, alias: str | None,
             description: str) -> None:
    """Upload an ONNX FILE (or a --builtin model) as a new version; prints the version. The file is
    streamed (with a progress bar on a terminal); a model with external data goes as one archive."""
    if (file is None) == (builtin is None):
        raise UsageError("give either an ONNX FILE or --builtin NAME", "see `treeline model register --help`")
    out = output()
    client = root_client(timeout=60)
    content_type = "application/octet-stream"
    source: bytes | Path
    if builtin is not None:
        if builtin not in model_zoo.BUILTIN_MODELS:
            raise UsageError(f"unknown built-in model {builtin!r}",
                             f"use one of: {', '.join(model_zoo.BUILTIN_MODELS)}")
        cache = settings().data_dir / "models"
        with out.step(f"exporting {builtin} to ONNX (cached in {cache})"):
            try:
                source = model_zoo.cached_onnx(builtin, cache)
            except ImportError as exc:
                raise Failure(f"exporting {builtin} needs {exc.name or 'torch'}",
                              "install it with `pip install -e .[export]`") from None
        name = name or builtin
        description = description or f"built-in {builtin}"
    else:
        assert file is not None
        if not file.is_file():
            raise UsageError(f"no such file: {file}", "check the path")
        source, content_type = _upload_source(file)
        name = name or _model_name(file)
    size = source.stat().st_size if isinstance(source, Path) else len(source)
    extra = ", with its external data" if content_type != "application/octet-stream" else ""
    label = f"uploading {name} ({size / 1e6:.1f} MB{extra})"
    try:
        with transfer_bar(out, label, size) as advance:
            version = client.register_model(name, chunks_of(source, advance), description=description,
                                            alias=alias, content_type=content_type)
    except PayloadTooLarge as exc:
        raise Failure(f"{name} ({size / 1e6:.1f} MB) is over the root's model size limit: {exc.message}",
                      "the root's TREELINE_MAX_MODEL_MB sets it") from None
    out.result(version, lambda: out.line(
        f"registered {version.get('name')} version {version.get('version')} "
        f"({int(version.get('size') or 0) / 1e6:.2f} MB, sha256 {str(version.get('sha256'))[:12]})"))


def _upload_source(file: Path) -> tuple[bytes | Path, str]:
    """The file itself (streamed from disk), or a tar of it with its external data files."""
    try:
        external = external_data_files(file)
    except Exception:  # noqa: BLE001 - not parseable here: the root gives its reason
        external = []
    if not external:
        return file, "application/octet-stream"
    return upload_body(file)


@model.command()
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option("--device-class", metavar="CLASS", help="measure on this device class only (default: all)")
@click.option("--timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="seconds to wait for the new profiles")
@click.option("--no-wait", "no_wait", is_flag=True, help="return once a cluster has accepted the request")
@output_option
@root_options
def profile(ref: str, device_class: str | None, timeout: float, no_wait: bool) -> None:
    """Measure a model version again on the cluster's devices (every class, or one)."""
    name, version = split_model_ref(ref)
    wait = not no_wait
    out = output()
    client = root_client()
    target = f"{name}:{version}" + (f" on {device_class}" if device_class else "")
    with out.step(f"asking a cluster to profile {target}"):
        answer = client.profile_model(name, version, device_class)
    number = int(answer.get("version") or 0) or version
    expected = {device_class} if device_class else set(answer.get("device_classes_cleared") or [])
    if not wait:
        out.result(answer, lambda: out.line(f"cluster {answer.get('cluster_name')} is profiling {target}"))
        return
    deadline = time.monotonic() + timeout
    with out.step(f"cluster {answer.get('cluster_name')} is profiling {target}"):
        while True:
            profiles = client.model_profiles(name, number)
            if (expected and expected <= set(profiles)) or (not expected and profiles):
                break
            if time.monotonic() > deadline:
                raise Failure(f"no new profile of {target} after {timeout:.0f} s",
                              "see `treeline logs cluster`, or wait longer with --timeout")
            time.sleep(PROFILE_POLL_S)
    shown = {k: v for k, v in profiles.items() if not device_class or k == device_class}
    doc = {**answer, "profiles": shown}
    out.result(doc, lambda: _print_profiles(out, name, number, shown))


def _print_profiles(out: Output, name: str, version: object, profiles: dict[str, Any]) -> None:
    out.line(f"profiled {name}:{version} on {plural(len(profiles), 'device class', 'device classes')}")
    for device_class, doc in sorted(profiles.items()):
        total = doc.get("total_ms") if isinstance(doc, dict) else None
        ops = len(doc.get("op_ms") or {}) if isinstance(doc, dict) else 0
        total_text = f"{total:.2f} ms total, " if isinstance(total, int | float) else ""
        out.line(f"  {device_class}: {total_text}{plural(ops, 'op')} timed")


@model.command(name="list")
@output_option
@root_options
def list_models() -> None:
    """The registered models: versions, aliases, latest version and its size."""
    out = output()
    client = root_client()
    rows = [model_row(m, client.model_versions(str(m["name"]))) for m in client.models()]
    out.result(rows, lambda: out.table(rows, MODEL_COLUMNS, empty="no models registered"))


@model.command()
@click.argument("ref", metavar="NAME[:REF]")
@output_option
@root_options
def show(ref: str) -> None:
    """One version (latest unless REF is a number or an alias): digest, signature, tags, aliases, the
    lineage chain up to the root model, metrics per device class and partitions."""
    name, version = split_model_ref(ref)
    out = output()
    client = root_client()
    doc = client.model_version(name, version)
    chain = lineage_chain(doc, client.model_version)
    out.result({**doc, "lineage_chain": chain}, lambda: render_version(out, doc, chain))


def _expected(value: str | None) -> int | object | None:
    """``--expected``: a version number, or ``none`` (the alias must not exist); absent: unconditional."""
    if value is None:
        return NO_EXPECTATION
    if value.lower() in ("none", "null", "-"):
        return None
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"--expected must be a version number or 'none', not {value!r}",
                         "e.g. --expected 3, or --expected none for an alias that must not exist yet")
    return int(value)


@model.command()
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=click.IntRange(min=1), required=False)
@click.option("--expected", metavar="V", default=None,
              help="only if ALIAS points at version V now ('none': only if it does not exist); "
                   "else nothing changes and the command fails naming the current version")
@click.option("--delete", "remove", is_flag=True, help="remove ALIAS instead of moving it")
@output_option
@root_options
def alias(name: str, alias: str, version: int | None, expected: str | None, remove: bool) -> None:
    """Point ALIAS (prod, canary, ...) of model NAME at VERSION, atomically (compare-and-set with
    --expected), or remove it with --delete."""
    out = output()
    client = root_client()
    wanted = _expected(expected)
    if remove:
        if version is not None:
            raise UsageError("give either VERSION or --delete",
                             f"treeline model alias {name} {alias} --delete")
        answer = client.delete_model_alias(name, alias, wanted if isinstance(wanted, int) else None)
        out.result(answer, lambda: out.line(f"removed {name}@{alias} (was version {answer.get('version')})"))
        return
    if version is None:
        raise UsageError("missing VERSION", f"treeline model alias {name} {alias} VERSION [--expected V]")
    doc = client.set_model_alias(name, alias, version, wanted)
    out.result(doc, lambda: out.line(f"{name}@{alias} -> version {doc.get('version')}"))


@model.command()
@click.argument("ref", metavar="NAME[:VERSION]")
@output_option
@root_options
def delete(ref: str) -> None:
    """Delete one version (NAME:VERSION, also an alias or latest) or the whole model (NAME); refused
    while a service uses it."""
    out = output()
    client = root_client(timeout=60)
    if ":" in ref:
        name, version = split_model_ref(ref)
        answer = client.delete_model_version(name, version)
        what = f"{name}:{answer.get('version')}"
    else:
        answer = client.delete_model(ref)
        what = f"{ref} ({plural(len(answer.get('versions') or []), 'version')})"
    dropped = len(answer.get("artifacts_deleted") or [])
    out.result(answer, lambda: out.line(f"deleted {what}, {plural(dropped, 'artifact')} freed"))


@model.command()
@click.argument("ref", metavar="NAME[:REF]")
@click.option("-o", "--output", "target", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="where to write the model (default: NAME-vVERSION.onnx here)")
@click.option("--force", is_flag=True, help="overwrite FILE if it exists")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@root_options
def download(ref: str, target: Path | None, force: bool, as_json: bool) -> None:
    """Download a version's ONNX file, streamed to disk (progress bar on a terminal), its sha256
    checked against the registry's (nothing is left behind when it differs)."""
    name, version = split_model_ref(ref)
    out = Output("json" if as_json else "table", output().verbose)
    client = root_client(timeout=60)
    doc = client.model_version(name, version)
    dest = target or Path(f"{name}-v{doc['version']}.onnx")
    if dest.exists() and not force:
        raise UsageError(f"{dest} exists", "pick another file with -o FILE, or overwrite it with --force")
    size = int(doc.get("size") or 0)
    with transfer_bar(out, f"downloading {name}:{doc['version']} ({size / 1e6:.1f} MB)", size) as advance:
        done = [0]

        def progress(received: int, total: int) -> None:
            advance(received - done[0])
            done[0] = received

        answer = client.download_model(name, int(doc["version"]), dest, progress)
    out.result(answer, lambda: out.line(
        f"downloaded {name}:{answer['version']} to {dest} ({answer['size'] / 1e6:.2f} MB, "
        f"sha256 {answer['sha256'][:12]} checked)"))
