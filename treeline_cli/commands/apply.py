"""``apply``, ``deploy`` and ``delete``: the desired state in, and out.

``apply FILE`` sends the SLA to the root's idempotent ``POST /api/apply`` (the same file twice
gives one application, ``unchanged`` the second time) and asks for an instance of every
service that has none yet (a deployment refused for the SLA's fault, e.g. a model that does
not resolve, names the SLA field and removes what this apply created); ``--dry-run`` asks
``POST /api/plan`` what the scheduler would do (a training service: the Flower placement, or
why it cannot be scheduled) and changes nothing; its exit code is 1 when any service (ml-model or
ml-training) cannot be scheduled. An unchanged training service whose last run ended is not
trained again (the ``unchanged`` line says so): ``deploy SERVICE`` starts a new run of it (a new
instance), followed like ``apply --wait``. ``deploy FILE`` is ``apply --wait``: it
follows each service until it is RUNNING and prints its placement (a training service: a
progress bar of its rounds until the result is registered); on a root without ``/api/apply``
it falls back to creating the applications anew (and says so).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from deployment_descriptors.unknown_fields import unknown_fields
from deployment_descriptors.validation import sla_schema
from treeline_cli.commands.common import output, output_option, root_client, root_options
from treeline_cli.describe import placement_lines
from treeline_cli.errors import Failure, UsageError
from treeline_cli.output import Output, plural
from treeline_cli.reasons import reason_lines
from treeline_cli.resolve import resolve_service
from treeline_cli.root_client import DeploymentFailed, RootClient, UnsupportedByRoot
from treeline_cli.training_view import (
    hierarchy_plan_lines,
    is_training,
    progress_lines,
    registered_model,
    training_placement_lines,
    watch_training,
)
from treeline_cli.views import World, cluster_costs, kind_named, ms
from treeline_common.errors import InvalidInput, NotFound, TreelineError, Unschedulable
from treeline_common.jobs import JobStatus

DEFAULT_TIMEOUT = 180.0
DRY_RUN_UNSCHEDULABLE = 1  # `apply --dry-run`'s exit code when a service cannot be scheduled
RUN_ENDED = (JobStatus.DELETED.value, JobStatus.FAILED.value)  # a training service's last run is over


def read_sla(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; UsageError when it is missing, unreadable or not a JSON object."""
    if not path.exists():
        raise UsageError(f"no such file: {path}", "check the path")
    if not path.is_file():
        raise UsageError(f"{path} is not a file", "give the path of an SLA JSON file")
    try:
        doc = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not JSON (not even text)", "give an SLA v2.0 JSON document") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                         "give an SLA v2.0 JSON document (see deployment_descriptors/examples)") from None
    except (ValueError, RecursionError):
        raise UsageError(f"{path} is not JSON", "give an SLA v2.0 JSON document") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path} holds JSON but not an object",
                         "an SLA is a JSON object with `applications`")
    return doc


def _submit(client: RootClient, sla: dict[str, Any], out: Output, fallback: bool) -> list[dict[str, Any]]:
    with out.step("submitting the SLA"):
        try:
            return client.apply(sla)
        except UnsupportedByRoot:
            if not fallback:
                raise
    out.warn(f"the root at {client.root_url} has no POST /api/apply; created new applications instead "
             "(not idempotent: upgrade the root)")
    return [{**app, "action": "created", "changes": []} for app in client.submit_sla(sla)]


def _ensure_instances(client: RootClient, applications: list[dict[str, Any]], out: Output,
                      sla: dict[str, Any]) -> list[str]:
    """Ask for an instance of every service that has none; returns their ids.

    A deployment the root refuses for the SLA's own fault (400/404: a model that does not
    resolve; 422 naming a ``training.`` field, e.g. ``training.hierarchical.min_clusters`` above
    the clusters that can train) raises that error naming the SLA field
    (``applications[0].microservices[0].model.name``) after removing what this apply created
    (:func:`_undo`): nothing half-made is left behind.
    """
    started = []
    for a_index, app in enumerate(applications):
        for service_id in app.get("microservices") or []:
            service = client.service(str(service_id))
            if service.get("instances") or service.get("status") != JobStatus.REQUESTED.value:
                continue
            name = str(service.get("microservice_name"))
            try:
                with out.step(f"deploying {name}"):
                    client.deploy_service(str(service_id))
            except (InvalidInput, NotFound) as exc:
                _undo(client, app, name, str(service_id), out)
                raise _at_field(exc, sla, a_index, name) from None
            except Unschedulable as exc:  # e.g. training.hierarchical.min_clusters: the SLA asks too much
                if not exc.details or not str(exc.details[0].get("path") or "").startswith("training."):
                    raise
                _undo(client, app, name, str(service_id), out)
                raise _at_field(exc, sla, a_index, name) from None
            started.append(str(service_id))
    return started


def _undo(client: RootClient, app: dict[str, Any], name: str, service_id: str, out: Output) -> None:
    """Remove what this apply made for a refused service: the application if it created it, the
    service if it added it; an updated service is left as the SLA now describes it."""
    if app.get("action") == "created":
        client.delete_application(str(app.get("applicationID")))
        out.warn(f"application {app.get('application_name')} was not kept (nothing left behind)")
    elif any(c.get("path") == f"microservices[{name}]" and c.get("old") is None
             for c in app.get("changes") or [] if isinstance(c, dict)):
        client.delete_service(service_id)
        out.warn(f"service {name} was not kept (nothing left behind)")


def _at_field(exc: TreelineError, sla: dict[str, Any], a_index: int, name: str) -> TreelineError:
    """``exc`` (paths relative to the service) with paths into the SLA file, in the same class."""
    services = ((sla.get("applications") or [{}])[a_index] or {}).get("microservices") or []
    m_index = next((i for i, ms in enumerate(services) if isinstance(ms, dict)
                    and ms.get("microservice_name") == name), 0)
    prefix = f"applications[{a_index}].microservices[{m_index}]."
    details = [d if str(d.get("path") or "").startswith("clusters.") else  # a cluster's reason, not a field
               dict(d, path=prefix + str(d.get("path") or "")) for d in exc.details] or [
        {"path": prefix.rstrip("."), "message": exc.message}]
    return type(exc)(f"{details[0]['path']}: {details[0].get('message')}", details)


def _print_applied(out: Output, applications: list[dict[str, Any]], started: list[str],
                   ended: Sequence[str] = ()) -> None:
    for app in applications:
        services = app.get("microservices") or []
        out.line(f"application {app.get('application_name')} ({app.get('applicationID')}): "
                 f"{app.get('action', 'created')}, {plural(len(services), 'service')}")
        if app.get("action") == "unchanged":
            for name in ended:
                out.line(f"  {name}: its last training run ended; run it again: treeline deploy {name}")
        for change in app.get("changes") or []:
            out.line(f"  {_change_text(change)}")
        for redeployed in app.get("redeployed") or []:
            out.line(f"  re-deploying service {redeployed.get('service_id')}")
        for failure in app.get("failures") or []:
            out.warn(f"{app.get('application_name')}: {failure.get('message', failure)}")
    if started:
        out.line(f"deploying {plural(len(started), 'service')}; follow with `treeline get services`")


def _change_text(change: Any) -> str:
    """``path: old -> new`` of one ``{path, old, new}`` change."""
    if not isinstance(change, dict):
        return str(change)
    def short(value: Any) -> str:
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return f"{change.get('path')}: {short(change.get('old'))} -> {short(change.get('new'))}"


def _wait_all(client: RootClient, applications: list[dict[str, Any]], out: Output,
              timeout: float) -> list[dict[str, Any]]:
    """Wait until every service is RUNNING; a FAILED one raises Failure with its reasons grouped.
    A training service is followed round by round until its result is registered (DELETED) or it
    fails (:func:`~treeline_cli.training_view.watch_training`)."""
    services = []
    for app in applications:
        for service_id in app.get("microservices") or []:
            current = client.service(str(service_id))
            name = current.get("microservice_name") or service_id
            if is_training(current):
                services.append(watch_training(client, current, out.err, lines=progress_lines(out) or out.err,
                                               timeout=timeout))
                continue
            with out.step(f"{name}: waiting until RUNNING") as update:
                def show(doc: dict[str, Any], name: str = str(name)) -> None:
                    status = str(doc.get("status"))
                    # a FAILED service's reasons are printed once, grouped, by the error below
                    detail = doc.get("status_detail") if status != "FAILED" else ""
                    detail = f" - {detail}" if detail else ""
                    update(f"{name}: {status}{detail}")
                try:
                    services.append(client.wait_deployed(str(service_id), timeout=timeout, on_change=show))
                except DeploymentFailed as exc:
                    raise _failure(client, str(name), exc) from None
    return services


def _failure(client: RootClient, name: str, exc: DeploymentFailed) -> Failure:
    service = exc.service
    names = World(client).node_names()
    lines = reason_lines(service, names)
    unschedulable = str(service.get("status_detail", "")).startswith("unschedulable")
    what = "cannot be scheduled" if unschedulable else "failed"
    return Failure(f"service {name} ({service.get('service_id')}) {what}"
                   + (f" ({plural(len(lines), 'reason')} below)" if lines else ""),
                   f"see `treeline describe service {service.get('service_id')}`", extra=lines)


def _apply(file: Path, dry_run: bool, wait: bool, timeout: float, fallback: bool) -> int:
    """The exit code: 0, or 1 for a dry run with a service that cannot be scheduled."""
    sla = read_sla(file)
    out = output()
    for unknown in unknown_fields(sla, sla_schema()):  # Oakestra's objects are open: a typo passes silently
        out.warn(f"{file}: {unknown['path']}: {unknown['message']}")
    client = root_client()
    if dry_run:
        with out.step("planning (dry run)"):
            plans = client.plan(sla)
        out.result({"services": plans}, lambda: _print_plans(out, plans))
        return DRY_RUN_UNSCHEDULABLE if any(not p.get("schedulable") for p in plans) else 0
    applications = _submit(client, sla, out, fallback)
    started = _ensure_instances(client, applications, out, sla)
    ended = _ended_trainings(client, applications, started)
    if not wait:
        out.result({"applications": applications, "deploying": started},
                   lambda: _print_applied(out, applications, started, ended))
        return 0
    services = _wait_all(client, applications, out, timeout)
    doc = {"applications": applications,
           "services": [{k: s.get(k) for k in ("service_id", "microservice_name", "status", "placement",
                                               "explanation")} for s in services]}

    def render() -> None:
        _print_applied(out, applications, [], ended)
        for service in services:
            if is_training(service):
                out.line(f"\n{service.get('microservice_name')} ({service['service_id']}) trained: "
                         f"registered {registered_model(service.get('events') or []) or '?'}")
                continue
            out.line(f"\n{service.get('microservice_name')} ({service['service_id']}) RUNNING")
            for line in placement_lines(service.get("placement") or {}):
                out.line(line)
    out.result(doc, render)
    return 0


def _ended_trainings(client: RootClient, applications: list[dict[str, Any]], started: list[str]) -> list[str]:
    """Names of the training services this apply left alone whose last run has ended (an
    unchanged SLA does not train again: ``treeline deploy <service>`` does)."""
    ended = []
    for app in applications:
        for service_id in app.get("microservices") or []:
            if str(service_id) in started:
                continue
            service = client.service(str(service_id))
            if is_training(service) and service.get("status") in RUN_ENDED:
                ended.append(str(service.get("microservice_name") or service_id))
    return ended


def _print_plans(out: Output, plans: list[dict[str, Any]]) -> None:
    for plan in plans:
        stages = plan.get("stages") or []
        predicted = plan.get("predicted") or {}
        name = f"{plan.get('application_name', '?')}/{plan.get('microservice_name')}"
        cluster = plan.get("cluster_name") or plan.get("cluster") or plan.get("cluster_id") or "?"
        training = plan.get("training")
        if isinstance(training, dict):
            what = "schedulable" if plan.get("schedulable") else "NOT schedulable"
            out.line(f"{name}: training {what} on {cluster} ({plan.get('strategy') or 'federated'}, "
                     f"{training.get('rounds', '?')} rounds, min_clients {training.get('min_clients', '?')}, "
                     f"data {training.get('data', '?')})")
            said = plan.get("schedulable") or training.get("unschedulable")  # else: only the plan's message
            why = "" if said else str(plan.get("message") or "")
            placement = [] if why else training_placement_lines(training, {})  # no placement to show
            for line in [*([f"  not schedulable: {why}"] if why else []), *hierarchy_plan_lines(plan),
                         *placement, *_cluster_lines(plan)]:
                out.line(line)
            continue
        if plan.get("schedulable"):
            out.line(f"{name}: schedulable on {cluster}, {plural(len(stages), 'stage')}, "
                     f"strategy {plan.get('strategy') or '?'}, "
                     f"predicted {ms(predicted.get('latency_ms'))} ms end to end")
            for stage in stages:
                out.line(f"  stage {stage.get('index')}: {stage.get('node_name')}, "
                         f"{float(stage.get('flops') or 0) / 1e6:.1f} MFLOPs, sends "
                         f"{int(stage.get('cut_bytes') or 0) / 1024:.1f} KB, "
                         f"predicted {ms(stage.get('predicted_compute_ms'))} ms compute")
        else:
            out.line(f"{name}: NOT schedulable on {cluster}" + (f": {plan['message']}" if plan.get("message")
                                                                  else ""))
        for line in _cluster_lines(plan):
            out.line(line)
        # reasons: {node name or id: "code: message"}, grouped so each reason shows once
        explanation = {"filtered_or_unused": plan.get("reasons") or {}}
        for line in reason_lines({"status": "FAILED", "explanation": explanation}):
            out.line(line)


def _cluster_lines(plan: dict[str, Any]) -> list[str]:
    """The clusters the root compared (their dry-run answers) and those it filtered out."""
    lines = []
    answers = plan.get("candidates") or []
    if len(answers) > 1:
        lines.append(f"  clusters compared: {', '.join(cluster_costs(answers))}")
    for name, reason in sorted((plan.get("rejected") or {}).items()):
        lines.append(f"  cluster {name} left out: {reason}")
    return lines


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True,
              help="show what the scheduler would do; change nothing. Exit code 1 when a service "
                   "(ml-model or ml-training) cannot be scheduled, 0 when all can")
@click.option("--wait", is_flag=True, help="wait until every service is RUNNING and show the placements; "
                                          "follow a training service's rounds until its result is registered")
@click.option("--timeout", type=click.FloatRange(min=1), default=DEFAULT_TIMEOUT, show_default=True,
              help="seconds to wait for RUNNING, or for a training service's result (with --wait)")
@output_option
@root_options
def apply(file: Path, dry_run: bool, wait: bool, timeout: float) -> int:
    """Create or update the applications of an SLA file (idempotent) and deploy new services.

    An unchanged training service is not trained again: `treeline deploy SERVICE` starts a new run.
    Ctrl-C while following a training leaves it training (exit code 130)."""
    return _apply(file, dry_run, wait, timeout, fallback=False)


@click.command()
@click.argument("target")
@click.option("--timeout", type=click.FloatRange(min=1), default=DEFAULT_TIMEOUT, show_default=True,
              help="seconds to wait for RUNNING (a training service: for its result)")
@output_option
@root_options
def deploy(target: str, timeout: float) -> int:
    """`apply FILE --wait` for an SLA file; for the name or id of a training service, a new
    training run of it (a new instance, from its SLA's starting model), followed until its
    result is registered."""
    path = Path(target)
    if path.exists() or path.suffix.lower() in (".json", ".yaml", ".yml"):  # else a service's name or id
        return _apply(path, False, True, timeout, fallback=True)
    return _train_again(target, timeout)


def _train_again(ref: str, timeout: float) -> int:
    """A new instance of training service ``ref``, followed (:func:`watch_training`)."""
    out = output()
    client = root_client()
    world = World(client)
    found = resolve_service(ref, world.services, world.apps)
    name = str(found.get("microservice_name") or ref)
    if not is_training(found):
        raise UsageError(f"no such file: {ref}, and service {name} is not a training service",
                         "deploy an SLA file (`treeline deploy FILE`) or a training service by name")
    if found.get("status") not in RUN_ENDED:
        raise UsageError(f"training service {name} is {found.get('status')}: its run has not ended",
                         f"follow it with `treeline training watch {name}`")
    with out.step(f"starting a new training run of {name}"):
        client.deploy_service(str(found["service_id"]))
    doc = watch_training(client, client.service(str(found["service_id"])), out.err,
                         lines=progress_lines(out) or out.err, timeout=timeout)
    result = registered_model(doc.get("events") or [])
    out.result({"service_id": doc.get("service_id"), "status": doc.get("status"), "result": result},
               lambda: out.line(f"{name} ({doc.get('service_id')}) trained: registered {result or '?'}"))
    return 0


@click.command()
@click.argument("kind")
@click.argument("name")
@output_option
@root_options
def delete(kind: str, name: str) -> None:
    """Delete an application (with its services), a service, or a model."""
    out = output()
    client = root_client(timeout=60)
    world = World(client)
    chosen = kind_named(kind)
    if chosen.name == "apps":
        app = chosen.resolve(world, name)
        with out.step(f"deleting application {name}"):
            result = client.delete_application(str(app.get("applicationID")))
    elif chosen.name == "services":
        service = chosen.resolve(world, name)
        with out.step(f"deleting service {name}"):
            result = client.delete_service(str(service.get("service_id")))
    elif chosen.name == "models":
        with out.step(f"deleting model {name}"):
            result = client.delete_model(name)
    else:
        raise UsageError(f"cannot delete {chosen.name}", "delete apps, services or models")
    failures = result.get("undeploy_failures") or []
    for failure in failures:
        out.warn(f"could not undeploy: {failure}")
    out.result(result, lambda: out.line(f"deleted {chosen.singular} {name}"))
