"""A training service in the CLI: its placement, its rounds, its result, and a progress view.

The figures come from what the root already holds for an ``ml-training`` service (nothing new
crosses a process boundary): the cluster's explanation of the placement
(:meth:`cluster_orchestrator.training.TrainingPlacement.explanation`: ``server``, ``clients``,
``rejected: [{node_id, reason, message}]``, ``unschedulable``, ``field``; a dry-run answer adds
``server_name``, ``client_names`` and each rejected ``node_name``) and the service's events
(``training_round``: ``round``, ``accuracy``, ``loss``, ``clients``; ``training_registered``:
``model`` = ``NAME:VERSION``).

:func:`watch_training` follows a service until it ends: DELETED (the trained version is
registered: the watch returns the service) or FAILED (:class:`~treeline_cli.errors.Failure`
with the status detail: one line, exit code 1). On a terminal it draws a rich progress bar
of rounds on stderr; elsewhere each round is one line on stderr.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from treeline_cli.errors import Failure
from treeline_cli.output import plural
from treeline_cli.root_client import RootClient
from treeline_common.jobs import JobStatus
from treeline_common.training import TRAINING_VIRTUALIZATION

Doc = dict[str, Any]
ROUND_EVENT = "training_round"
REGISTERED_EVENT = "training_registered"
DEFAULT_WATCH_TIMEOUT_S = 3600.0


def is_training(service: Mapping[str, Any]) -> bool:
    return service.get("virtualization") == TRAINING_VIRTUALIZATION


def planned_rounds(service: Mapping[str, Any]) -> int | None:
    """The SLA's ``training.rounds`` of a service doc, if it has one."""
    block = ((service.get("microservice") or {}).get("training") or {})
    rounds = block.get("rounds") if isinstance(block, Mapping) else None
    return rounds if isinstance(rounds, int) and not isinstance(rounds, bool) else None


def _figure(value: Any, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if isinstance(value, int | float) else "n/a"


def round_text(event: Mapping[str, Any], rounds: int | None = None) -> str:
    """``round 2/5: accuracy 0.812, loss 0.532, 3 clients`` of a ``training_round`` event."""
    of = f"/{rounds}" if rounds else ""
    clients = event.get("clients")
    who = plural(int(clients), "client") if isinstance(clients, int) else "? clients"
    return (f"round {event.get('round')}{of}: accuracy {_figure(event.get('accuracy'))}, "
            f"loss {_figure(event.get('loss'))}, {who}")


def registered_model(events: Sequence[Mapping[str, Any]]) -> str:
    """The ``NAME:VERSION`` the newest ``training_registered`` event names; ``""`` when none."""
    found = [e for e in events if e.get("kind") == REGISTERED_EVENT and e.get("model")]
    return str(found[-1]["model"]) if found else ""


def training_placement_lines(explanation: Mapping[str, Any] | None, node_names: Mapping[str, str],
                             indent: str = "  ") -> list[str]:
    """Server, clients and each rejected node with its reason code and message; or why the
    placement cannot be made (naming the SLA field)."""
    if not explanation or "clients" not in explanation:
        return [f"{indent}(not placed yet)"]

    def name(node_id: Any) -> str:
        return node_names.get(str(node_id), str(node_id))

    lines = []
    if explanation.get("unschedulable"):
        lines.append(f"{indent}not schedulable: {explanation['unschedulable']}")
    else:
        clients = explanation.get("client_names") or [name(c) for c in explanation.get("clients") or []]
        server = explanation.get("server_name") or name(explanation.get("server"))
        lines.append(f"{indent}server:   {server} (Flower SuperLink + ServerApp)")
        lines.append(f"{indent}clients:  {', '.join(clients) or '-'} ({plural(len(clients), 'client')})")
    for rejected in explanation.get("rejected") or []:
        who = rejected.get("node_name") or name(rejected.get("node_id"))
        lines.append(f"{indent}rejected {who}: {rejected.get('reason')}: {rejected.get('message')}")
    return lines


def rounds_of(events: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The ``training_round`` events of the newest instance that has any, oldest first."""
    rounds = [e for e in events if e.get("kind") == ROUND_EVENT]
    if not rounds:
        return []
    newest = rounds[-1].get("instance")
    return [e for e in rounds if e.get("instance") == newest]


class _Lines:
    """Progress as one stderr line per round (off a terminal)."""

    def __init__(self, console: Console, rounds: int | None) -> None:
        self.console = console
        self.rounds = rounds

    def round(self, event: Mapping[str, Any]) -> None:
        self.console.print(round_text(event, self.rounds), highlight=False, crop=False)

    def status(self, text: str) -> None:
        self.console.print(text, highlight=False, crop=False)

    def close(self) -> None:
        pass


class _Bar:
    """Progress as a rich bar of rounds (on a terminal): ``round N/R``, accuracy, clients."""

    def __init__(self, console: Console, rounds: int | None, name: str) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[figures]}"), TextColumn("{task.fields[state]}"),
                                 TimeElapsedColumn(), console=console)
        self.task = self.progress.add_task(f"training {name}", total=rounds, figures="", state="starting")
        self.progress.start()

    def round(self, event: Mapping[str, Any]) -> None:
        clients = event.get("clients")
        self.progress.update(self.task, completed=int(event.get("round") or 0),
                             figures=f"accuracy {_figure(event.get('accuracy'))}, "
                                     f"loss {_figure(event.get('loss'))}, {clients} client(s)")

    def status(self, text: str) -> None:
        self.progress.update(self.task, state=text)

    def close(self) -> None:
        self.progress.stop()


def watch_training(client: RootClient, service: Doc, console: Console, *,
                   timeout: float = DEFAULT_WATCH_TIMEOUT_S, interval: float = 0.5,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> Doc:
    """Follow a training service until it ends (see the module docstring); returns the final
    service doc with ``events`` added. Failure on FAILED (its status detail) or after ``timeout``."""
    service_id = str(service.get("service_id"))
    doc = client.service(service_id)
    name = str(doc.get("microservice_name") or service_id)
    rounds = planned_rounds(doc)
    view: _Bar | _Lines = _Bar(console, rounds, name) if console.is_terminal else _Lines(console, rounds)
    shown: set[tuple[Any, Any]] = set()
    last_status = ""
    deadline = clock() + timeout
    try:
        while True:
            events = client.service_events(service_id)
            for event in rounds_of(events):
                key = (event.get("instance"), event.get("round"))
                if key not in shown:
                    shown.add(key)
                    view.round(event)
            status = str(doc.get("status"))
            detail = str(doc.get("status_detail") or "")
            if f"{status} {detail}" != last_status and status != JobStatus.RUNNING.value:
                view.status(f"{name}: {status}" + (f" - {detail}" if detail else ""))
            last_status = f"{status} {detail}"
            if status == JobStatus.DELETED.value:
                return {**doc, "events": events}
            if status == JobStatus.FAILED.value:
                raise Failure(f"training {name} failed: {detail or 'no reason given'}",
                              f"see `treeline describe service {service_id}`")
            if clock() > deadline:
                raise Failure(f"training {name} still {status} after {timeout:.0f} s ({detail})",
                              "watch again with `treeline training watch` or a longer --timeout")
            sleep(interval)
            doc = client.service(service_id)
    finally:
        view.close()
