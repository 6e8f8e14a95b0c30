"""The shipped example SLAs (``examples/*.json``) and variants of them.

Why here: the demo, the greedy benchmark and the end-to-end tests deploy the same examples
under other application names or with another scheduler profile. Building those variants next
to the files they read keeps one definition, and lets the benchmarks use it without importing
the CLI.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any


def example_path(name: str) -> Path:
    """Path of a shipped example SLA, e.g. ``example_path("mobilenet_v2")``; FileNotFoundError
    for an unknown name."""
    path = Path(str(resources.files(__package__).joinpath("examples", f"{name}.json")))
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def example_sla(example: str | Path, application_name: str, **model: Any) -> dict[str, Any]:
    """A fresh copy of an example SLA (a shipped example's name, or the path of an SLA file)
    under another application name, with ``model`` merged into its first microservice's model
    block, e.g. ``scheduler_profile="amp4ec-baseline"`` or ``source={"node": "rpi4-1"}``.

    The result is a new document each call; the file is never modified.
    """
    path = example if isinstance(example, Path) else example_path(example)
    sla: dict[str, Any] = json.loads(path.read_text())
    application = sla["applications"][0]
    application["application_name"] = application_name
    application["microservices"][0]["model"].update(model)
    return sla
