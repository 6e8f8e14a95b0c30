"""``model register FILE | --builtin NAME`` and ``model profile NAME[:VERSION]``."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import click

import model_zoo
from treeline_cli.commands.common import output, output_option, root_client, root_options, setting, settings
from treeline_cli.errors import Failure, UsageError
from treeline_cli.model_files import upload_body
from treeline_cli.output import Output, plural
from treeline_cli.resolve import split_model_ref

PROFILE_POLL_S = 0.5


@click.group()
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
    """Upload an ONNX FILE (or a --builtin model) as a new version; prints the version."""
    if (file is None) == (builtin is None):
        raise UsageError("give either an ONNX FILE or --builtin NAME", "see `treeline model register --help`")
    out = output()
    client = root_client(timeout=60)
    if builtin is not None:
        if builtin not in model_zoo.BUILTIN_MODELS:
            raise UsageError(f"unknown built-in model {builtin!r}",
                             f"use one of: {', '.join(model_zoo.BUILTIN_MODELS)}")
        cache = settings().data_dir / "models"
        with out.step(f"exporting {builtin} to ONNX (cached in {cache})"):
            try:
                data = model_zoo.cached_onnx(builtin, cache)
            except ImportError as exc:
                raise Failure(f"exporting {builtin} needs {exc.name or 'torch'}",
                              "install it with `pip install -e .[export]`") from None
        name = name or builtin
        description = description or f"built-in {builtin}"
        content_type = "application/octet-stream"  # built-ins are exported as one file
    else:
        assert file is not None
        if not file.is_file():
            raise UsageError(f"no such file: {file}", "check the path")
        data, content_type = upload_body(file)
        name = name or _model_name(file)
    with out.step(f"uploading {name} ({len(data) / 1e6:.1f} MB"
                  f"{', with its external data' if content_type != 'application/octet-stream' else ''})"):
        version = client.register_model(name, data, description=description, alias=alias,
                                        content_type=content_type)
    out.result(version, lambda: out.line(
        f"registered {version.get('name')} version {version.get('version')} "
        f"({int(version.get('size') or 0) / 1e6:.2f} MB, sha256 {str(version.get('sha256'))[:12]})"))


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
