"""``treeline training watch SERVICE``: follow a training service's rounds until it ends.

The same view as ``treeline apply --wait`` gives a training service
(:func:`treeline_cli.training_view.watch_training`): a progress bar of rounds on stderr, then the
rounds and the result on stdout; off a terminal one line per round on stdout as it comes (each
round once, also with ``2>&1``), then the result. Exit code 0 once the trained version is
registered; 1 with the one-line reason when the training fails, the service is deleted or the
timeout passes; 130 on Ctrl-C, after one line saying the training goes on.
"""

from __future__ import annotations

import click

from treeline_cli.commands.common import output, output_option, root_client, root_options
from treeline_cli.errors import TreelineGroup, UsageError
from treeline_cli.resolve import resolve_service
from treeline_cli.training_view import (
    DEFAULT_WATCH_TIMEOUT_S,
    is_training,
    planned_rounds,
    progress_lines,
    registered_model,
    round_text,
    rounds_of,
    watch_training,
)
from treeline_cli.views import World


@click.group(cls=TreelineGroup, no_args_is_help=True)
def training() -> None:
    """Federated training services (virtualization ml-training)."""


@training.command()
@click.argument("service")
@click.option("--timeout", type=click.FloatRange(min=1), default=DEFAULT_WATCH_TIMEOUT_S, show_default=True,
              help="seconds to follow the training before giving up")
@output_option
@root_options
def watch(service: str, timeout: float) -> None:
    """Follow SERVICE's rounds (round N/R, accuracy, loss, clients) until its result is registered."""
    out = output()
    world = World(root_client())
    found = resolve_service(service, world.services, world.apps)
    if not is_training(found):
        raise UsageError(f"service {service} is not a training service ({found.get('virtualization')})",
                         "watch an ml-training service; follow others with `treeline describe service`")
    current = world.client.service(str(found["service_id"]))
    streamed = progress_lines(out)
    doc = watch_training(world.client, current, out.err, lines=streamed or out.err, timeout=timeout)
    rounds = rounds_of(doc.get("events") or [])
    result = registered_model(doc.get("events") or [])

    def render() -> None:
        total = planned_rounds(doc)
        for event in rounds if streamed is None else []:  # each round once on stdout
            out.line(round_text(event, total))
        out.line(f"{doc.get('microservice_name')} ({doc.get('service_id')}) trained: "
                 f"registered {result or '?'}")
    out.result({"service_id": doc.get("service_id"), "status": doc.get("status"),
                "status_detail": doc.get("status_detail"), "result": result,
                "rounds": [{k: e.get(k) for k in ("round", "accuracy", "loss", "clients")} for e in rounds]},
               render)
