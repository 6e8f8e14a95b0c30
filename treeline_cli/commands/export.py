"""``export-images APP DIR``: one container build context per partition of a running service."""

from __future__ import annotations

from pathlib import Path

import click

from treeline_cli.commands.common import output, output_option, root_client, root_options
from treeline_cli.errors import Failure, UsageError
from treeline_cli.resolve import inference_target
from treeline_cli.views import World
from treeline_common.jobs import JobStatus


@click.command("export-images")
@click.argument("app")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--service", default=None, metavar="NAME", help="the service, when the application has several")
@output_option
@root_options
def export_images(app: str, directory: Path, service: str | None) -> None:
    """Write DIR/stage-<i>/ (Dockerfile.edge for arm64, Dockerfile.cloud for amd64, the partition,
    the node runtime, pinned requirements without torch) for each partition of APP's running
    placement, and DIR/compose.yaml that runs them as the deployed pipeline."""
    from treeline_cli.export_images import warnings, write_contexts  # copies sources: only when exporting

    out = output()
    client = root_client(timeout=60)
    world = World(client)
    target = inference_target(app, service, world.apps, world.services)
    name = f"{target.get('microservice_name')} ({target.get('service_id')})"
    if target.get("status") != JobStatus.RUNNING.value or not target.get("placement"):
        raise Failure(f"service {name} is {target.get('status')}, not RUNNING",
                      f"see `treeline describe service {target.get('service_id')}`")
    if directory.exists() and any(directory.iterdir()):
        raise UsageError(f"{directory} is not empty", "give a new or empty directory")
    nodes = {str(n.get("node_id")): n for n in world.nodes}
    with out.step(f"writing build contexts of {name} to {directory}"):
        try:
            folders = write_contexts(target["placement"], client.artifact, directory, nodes)
        except ValueError as exc:
            raise Failure(str(exc), "deploy the service again and retry") from None
    problems = warnings(target["placement"], nodes)
    for line in problems:
        out.warn(line)
    out.result({"directory": str(directory), "stages": [str(f) for f in folders],
                "compose": str(directory / "compose.yaml"), "warnings": problems},
               lambda: out.line(f"wrote {len(folders)} build context(s) and {directory / 'compose.yaml'}"))
