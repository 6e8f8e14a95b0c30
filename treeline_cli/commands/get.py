"""``get KIND [NAME]`` (a table, or JSON/YAML) and ``describe KIND NAME`` (readable detail)."""

from __future__ import annotations

from typing import Any

import click

from treeline_cli.commands.common import output, output_option, root_client, root_options
from treeline_cli.describe import DESCRIBERS
from treeline_cli.errors import UsageError
from treeline_cli.resolve import resolve_service, split_model_ref
from treeline_cli.views import KINDS, VERSION_COLUMNS, World, kind_named

KIND_HELP = ", ".join(k.name for k in KINDS)


@click.command()
@click.argument("kind", metavar="KIND")
@click.argument("name", required=False)
@output_option
@root_options
def get(kind: str, name: str | None) -> None:
    """List objects of a KIND (nodes, clusters, apps, services, deployments, models, events),
    or the one called NAME (for events: a service's events; for models: its versions)."""
    chosen = kind_named(kind)
    out = output()
    world = World(root_client())
    if chosen.name == "events":
        services = world.services if name is None else [resolve_service(name, world.services, world.apps)]
        rows = world.events(services)
        out.result(rows, lambda: out.table(rows, chosen.columns, empty="no events"))
        return
    if chosen.name == "models" and name is not None:
        model, version = split_model_ref(name)
        versions = ([world.client.model_version(model, version)] if ":" in name
                    else world.client.model_versions(chosen.resolve(world, model)["name"]))
        out.result(versions if ":" not in name else versions[0],
                   lambda: out.table(versions, VERSION_COLUMNS))
        return
    if name is not None:
        row: dict[str, Any] = chosen.resolve(world, name)
        rows = [r for r in chosen.rows(world) if _same(r, row)] or [row]
        out.result(rows[0], lambda: out.table(rows, chosen.columns))
    else:
        rows = chosen.rows(world)
        out.result(rows, lambda: out.table(rows, chosen.columns, empty=f"no {chosen.name}"))
    for problem in world.node_problems:
        out.warn(problem)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    for key in ("deployment_id", "service_id", "applicationID", "node_id", "cluster_id", "name"):
        if key in a or key in b:
            return a.get(key) == b.get(key)
    return False


@click.command()
@click.argument("kind", metavar="KIND")
@click.argument("name")
@output_option
@root_options
def describe(kind: str, name: str) -> None:
    """Show one object in detail; a service (or deployment) with its placement, the scheduler's
    explanation and its history."""
    chosen = kind_named(kind)
    describer = DESCRIBERS.get(chosen.name)
    if describer is None:
        raise UsageError(f"cannot describe {chosen.name}", f"describe one of: {', '.join(DESCRIBERS)}")
    out = output()
    world = World(root_client())
    target = chosen.resolve(world, name)
    if chosen.name == "deployments":
        target = world.client.service(str(target.get("service_id")))
    doc, lines = describer(world, target)

    def render() -> None:
        for line in lines:
            out.line(line)
    out.result(doc, render)
    for problem in world.node_problems:
        out.warn(problem)
