"""A training service in the CLI: its placement, its rounds, its result, and a progress view.

The figures come from what the root already holds for an ``ml-training`` service (nothing new
crosses a process boundary): the cluster's explanation of the placement
(:meth:`cluster_orchestrator.training.TrainingPlacement.explanation`: ``server``, ``clients``,
``rejected: [{node_id, reason, message}]``, ``unschedulable``, ``field``; a dry-run answer adds
``server_name``, ``client_names`` and each rejected ``node_name``) and the service's events
(``training_round``: ``round``, ``accuracy``, ``loss``, ``clients``, ``epsilon`` under
differential privacy; ``training_client_lost`` / ``training_client_rejoined`` /
``training_server_restarted``: ``message``; ``training_registered``: ``model`` = ``NAME:VERSION``).

:func:`watch_training` follows a service until it ends: DELETED (the trained version is
registered: the watch returns the service), FAILED or deleted meanwhile
(:class:`~treeline_cli.errors.Failure`: one line, exit code 1). On a terminal it draws a rich
progress bar of rounds on stderr (notices and status changes as lines above it); elsewhere each
round, notice and status change is one line, on stdout when the caller passes it (so that
``2>&1`` shows each round once). Ctrl-C says how to watch again and exits 130.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from treeline_cli.errors import Failure
from treeline_cli.output import Output, plural
from treeline_cli.root_client import RootClient
from treeline_common.errors import NotFound
from treeline_common.jobs import JobStatus
from treeline_common.training import TRAINING_VIRTUALIZATION
from treeline_common.training_hierarchy import ROLE_ROOT

Doc = dict[str, Any]
ROUND_EVENT = "training_round"
REGISTERED_EVENT = "training_registered"
NOTICE_EVENTS = ("training_client_lost", "training_client_rejoined", "training_server_restarted")
NAME_WIDTH = 16  # the bar's name column: the round counter must fit at 80 columns
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


def _epsilon(event: Mapping[str, Any]) -> float | None:
    """The privacy budget spent so far of a round under differential privacy; None without."""
    eps = event.get("epsilon")
    return float(eps) if isinstance(eps, int | float) and not isinstance(eps, bool) else None


def round_text(event: Mapping[str, Any], rounds: int | None = None) -> str:
    """``round 2/5: accuracy 0.812, loss 0.532, 3 clients`` of a ``training_round`` event (with
    ``, epsilon 1.23`` under differential privacy); round 0 is the starting model, evaluated
    before any client trained: ``round 0 (starting model): accuracy 0.101, loss 2.301``."""
    figures = f"accuracy {_figure(event.get('accuracy'))}, loss {_figure(event.get('loss'))}"
    if event.get("round") == 0:
        return f"round 0 (starting model): {figures}"
    of = f"/{rounds}" if rounds else ""
    clients = event.get("clients")
    who = plural(int(clients), "client") if isinstance(clients, int) else "? clients"
    eps = _epsilon(event)
    privacy = f", epsilon {eps:.2f}" if eps is not None else ""
    return f"round {event.get('round')}{of}: {figures}, {who}{privacy}"


def notice_text(event: Mapping[str, Any]) -> str:
    """One line of a client lost or rejoined, or a server restarted (the cluster's message)."""
    what = str(event.get("kind", "")).removeprefix("training_").replace("_", " ")
    return f"{what}: {event.get('message', '')}"


def registered_model(events: Sequence[Mapping[str, Any]]) -> str:
    """The ``NAME:VERSION`` the newest ``training_registered`` event names; ``""`` when none."""
    found = [e for e in events if e.get("kind") == REGISTERED_EVENT and e.get("model")]
    return str(found[-1]["model"]) if found else ""


def hierarchy_plan_lines(plan: Mapping[str, Any]) -> list[str]:
    """A hierarchical training plan: where the root aggregator goes, the clusters that train and
    why the others do not (the placement lines below are the first training cluster's)."""
    parts = plan.get("hierarchy")
    if not isinstance(parts, Mapping):
        return []
    clusters = ", ".join(parts.get("clusters") or []) or "(none)"
    lines = [f"  root aggregator on {parts.get('root_cluster') or '?'}; cluster aggregators on {clusters} "
             f"(min_clusters {parts.get('min_clusters')}, {parts.get('cluster_rounds')} cluster round(s) "
             "per global round)"]
    lines += [f"  cluster {name} does not take part: {why}"
              for name, why in sorted((parts.get("rejected") or {}).items())]
    return lines


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
        lines.append(f"{indent}server:   {server} (the Flower server, the aggregator)")
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


def watched_instance(doc: Mapping[str, Any], events: Sequence[Mapping[str, Any]]) -> Any:
    """The instance a watch follows: the newest root part of a hierarchical run, else the
    service's newest instance (a run started again is a new instance, its predecessor's rounds
    are not this run's); else the newest with rounds."""
    instances = [i for i in doc.get("instances") or []
                 if isinstance(i, Mapping) and isinstance(i.get("instance"), int)]
    roots = [int(i["instance"]) for i in instances if i.get("training_part") == ROLE_ROOT]
    if roots:  # a hierarchical run: its root part has the global rounds and registers the result
        return max(roots)
    if instances:
        return max(int(i["instance"]) for i in instances)
    current = rounds_of(events)
    return current[-1].get("instance") if current else None


def instance_state(doc: Mapping[str, Any], instance: Any) -> tuple[str, str]:
    """``(status, detail)`` of the watched instance (its own, not the service's: an older run's
    instance re-pushed by a restarted cluster must not end this run's watch); the service's when
    no instance is watched or the service does not list it."""
    for inst in doc.get("instances") or []:
        if instance is not None and isinstance(inst, Mapping) and inst.get("instance") == instance:
            return str(inst.get("status")), str(inst.get("status_detail") or "")
    return str(doc.get("status")), str(doc.get("status_detail") or "")


def progress_of(events: Sequence[Mapping[str, Any]], instance: Any) -> list[Mapping[str, Any]]:
    """The rounds, clients lost or rejoined and server restarts of ``instance``, oldest first."""
    kinds = (ROUND_EVENT, *NOTICE_EVENTS)
    return [e for e in events if e.get("kind") in kinds and e.get("instance") in (None, instance)]


class _Lines:
    """Progress as one line per round, notice and status change (off a terminal)."""

    def __init__(self, console: Console, rounds: int | None) -> None:
        self.console = console
        self.rounds = rounds

    def round(self, event: Mapping[str, Any]) -> None:
        self.console.print(round_text(event, self.rounds), highlight=False, crop=False)

    def status(self, text: str, word: str = "") -> None:
        self.console.print(text, highlight=False, crop=False)

    def notice(self, text: str) -> None:
        self.console.print(text, highlight=False, crop=False)

    def close(self) -> None:
        pass


class _Bar:
    """Progress as a rich bar of rounds (on a terminal), readable at 80 columns:
    ``NAME ━━━━━━ 2/5 acc 0.812 loss 0.532 3 cl 0:00:12``; before the first round the figures
    column shows the status word. Status changes and notices print as lines above the bar."""

    def __init__(self, console: Console, rounds: int | None, name: str) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=16),
                                 MofNCompleteColumn(), TextColumn("{task.fields[figures]}"),
                                 TimeElapsedColumn(), console=console)
        short = name if len(name) <= NAME_WIDTH else name[:NAME_WIDTH - 1] + "…"
        self.task = self.progress.add_task(short, total=rounds, figures="starting")
        self.rounds_seen = False
        self.progress.start()

    def round(self, event: Mapping[str, Any]) -> None:
        clients = event.get("clients")
        eps = _epsilon(event)
        figures = f"acc {_figure(event.get('accuracy'))} loss {_figure(event.get('loss'))}"
        if event.get("round") != 0:
            figures += f" {clients if isinstance(clients, int) else '?'} cl"
        if eps is not None:
            figures += f" ε {eps:.2f}"
        self.rounds_seen = True
        self.progress.update(self.task, completed=int(event.get("round") or 0), figures=figures)

    def status(self, text: str, word: str = "") -> None:
        self.progress.console.print(text, highlight=False, crop=False)
        if word and not self.rounds_seen:  # until the first round, the figures column says what happens
            self.progress.update(self.task, figures=word.lower())

    def notice(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, crop=False)

    def close(self) -> None:
        self.progress.stop()


def progress_lines(out: Output) -> Console | None:
    """Where a watch writes its per-round lines off a terminal: stdout in table format (the
    caller then does not repeat them); None when stderr is a terminal (the bar) or stdout
    carries a JSON/YAML document (the lines go to stderr)."""
    return None if out.err.is_terminal or out.structured else out.out


def stopped_line(name: str) -> str:
    """What Ctrl-C on a watch prints: the training goes on without the watcher."""
    return (f"stopped watching; {name} keeps training: treeline training watch {name} "
            f"(or treeline delete service {name})")


def watch_training(client: RootClient, service: Doc, console: Console, *, lines: Console | None = None,
                   timeout: float = DEFAULT_WATCH_TIMEOUT_S, interval: float = 0.5,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> Doc:
    """Follow a training service until it ends (see the module docstring); returns the final
    service doc with ``events`` added. ``console`` (stderr) draws the bar on a terminal;
    off a terminal each round, notice and status change is one line on ``lines`` (default
    ``console``; the CLI passes stdout so that ``2>&1`` shows each round once).

    Failure on FAILED (its status detail), when the service is deleted meanwhile, or after
    ``timeout`` (naming ``treeline training watch <name>``). Ctrl-C prints :func:`stopped_line`
    and re-raises KeyboardInterrupt (the CLI exits 130)."""
    service_id = str(service.get("service_id"))
    doc = client.service(service_id)
    name = str(doc.get("microservice_name") or service_id)
    rounds = planned_rounds(doc)
    view: _Bar | _Lines = (_Bar(console, rounds, name) if console.is_terminal
                           else _Lines(lines or console, rounds))
    shown: set[tuple[Any, ...]] = set()
    last_status = ""
    deadline = clock() + timeout
    watched: Any = None
    try:
        while True:
            events = client.service_events(service_id)
            if watched is None:  # chosen once: later instances (another run) are not this watch's
                watched = watched_instance(doc, events)
            for event in progress_of(events, watched):
                is_round = event.get("kind") == ROUND_EVENT
                key = ((event.get("instance"), event.get("round")) if is_round else
                       (event.get("instance"), event.get("ts"), event.get("kind"), event.get("message")))
                if key not in shown:
                    shown.add(key)
                    if is_round:
                        view.round(event)
                    else:
                        view.notice(notice_text(event))
            status, detail = instance_state(doc, watched)
            if f"{status} {detail}" != last_status and status != JobStatus.RUNNING.value:
                view.status(f"{name}: {status}" + (f" - {detail}" if detail else ""), status)
            last_status = f"{status} {detail}"
            if status == JobStatus.DELETED.value:
                return {**doc, "events": events}
            if status == JobStatus.FAILED.value:
                raise Failure(f"training {name} failed: {detail or 'no reason given'}",
                              f"see `treeline describe service {service_id}`")
            if clock() > deadline:
                raise Failure(f"training {name} still {status} after {timeout:.0f} s ({detail})",
                              f"it goes on: watch again with `treeline training watch {name}` "
                              "(or a longer --timeout)")
            sleep(interval)
            try:
                doc = client.service(service_id)
            except NotFound:
                raise Failure(f"service {name} was deleted while training") from None
    except KeyboardInterrupt:
        view.close()
        console.print(stopped_line(name), highlight=False, crop=False)
        raise
    finally:
        view.close()
