"""``treeline describe``: one object in readable lines.

A service (or deployment) shows where it runs and why: its placement (each stage with its
node, cut bytes and predicted ms), the scheduler's explanation (profile, weights, scores and
the reason for every node it filtered or did not use) and its history (the service's events).
A training service shows its Flower placement (server, clients, rejected nodes with their
reasons), each round's accuracy, loss and clients in its history, and the registered result
(:mod:`treeline_cli.training_view`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from treeline_cli.output import plural
from treeline_cli.reasons import reason_lines
from treeline_cli.resolve import Doc, app_id
from treeline_cli.training_view import is_training, registered_model, training_placement_lines
from treeline_cli.views import World, age, event_detail, model_ref, ms, stages_of, yes_no


def _kb(value: Any) -> str:
    return f"{int(value or 0) / 1024:.1f} KB"


def placement_lines(placement: Mapping[str, Any], indent: str = "  ") -> list[str]:
    """Stages with node names, FLOPs, cut bytes and predicted ms; the plan's predicted totals."""
    if not placement:
        return [f"{indent}(none)"]
    stages = list(placement.get("stages") or [])
    lines = [f"{indent}{plural(len(stages), 'stage')}, strategy {placement.get('strategy', '?')}, "
             f"generation {placement.get('generation', '?')}"]
    relay = placement.get("relay")
    if relay:
        lines.append(f"{indent}entry: relay on {relay.get('node_name') or relay.get('node_id')} "
                     "(where the input arrives)")
    for stage in stages:
        transfer = stage.get("predicted_transfer_in_ms")
        transfer_text = f", {ms(transfer)} ms transfer in" if transfer else ""
        lines.append(
            f"{indent}stage {stage.get('index')}: {stage.get('node_name') or stage.get('node_id')} "
            f"({stage.get('profile', '?')}), {float(stage.get('flops') or 0) / 1e6:.1f} MFLOPs, "
            f"{'sends ' + _kb(stage.get('cut_bytes')) if stage is not stages[-1] else 'replies'}, "
            f"predicted {ms(stage.get('predicted_compute_ms'))} ms compute{transfer_text}, "
            f"{stage.get('state', '?')}")
    predicted = placement.get("predicted") or {}
    if predicted:
        lines.append(f"{indent}predicted: {ms(predicted.get('latency_ms'))} ms end to end, "
                     f"{float(predicted.get('throughput_rps') or 0):.0f} req/s pipelined, "
                     f"{float(predicted.get('energy_mj') or 0):.1f} mJ per inference")
    return lines


def explanation_lines(service: Doc, node_names: Mapping[str, str], indent: str = "  ") -> list[str]:
    """The scheduler's explanation: profile, weights, shortlist with scores, unused and filtered nodes."""
    explanation = service.get("explanation") or {}
    if not explanation:
        return [f"{indent}(none yet)"]
    names = {**node_names, **(explanation.get("node_names") or {})}

    def name(node_id: str) -> str:
        return names.get(node_id, node_id)

    lines = [f"{indent}profile {explanation.get('profile', '?')}"]
    weights = explanation.get("weights") or {}
    if weights:
        lines.append(f"{indent}weights: " + ", ".join(f"{k} {v}" for k, v in sorted(weights.items())))
    scores = explanation.get("scores") or {}
    for node_id in explanation.get("shortlist") or []:
        score = scores.get(node_id) or {}
        plugins = ", ".join(f"{k} {v}" for k, v in sorted((score.get("by_plugin") or {}).items()))
        lines.append(f"{indent}shortlisted {name(node_id)}: score {score.get('total', '-')} ({plugins})")
    compression = explanation.get("compression")
    if isinstance(compression, Mapping):
        lines.append(f"{indent}{compression_line(compression)}")
    cascade = explanation.get("cascade")
    if isinstance(cascade, Mapping):
        lines.append(f"{indent}{cascade_line(cascade)}")
    used = {s.get("node_id") for s in stages_of(service)}
    if service.get("status") != "FAILED":
        for node_id, reason in sorted((explanation.get("filtered_or_unused") or {}).items()):
            if node_id not in used and node_id not in (explanation.get("filtered") or {}):
                lines.append(f"{indent}not used {name(node_id)}: {reason}")
    failed = service.get("status") == "FAILED"
    shown = {"explanation": explanation, "status": service.get("status"),
             "status_detail": service.get("status_detail") if failed else ""}
    for line in reason_lines(shown, names, indent=""):
        lines.append(f"{indent}not schedulable on {line}")
    return lines


def compression_line(entry: Mapping[str, Any]) -> str:
    """One line for the explanation's boundary ``compression`` (cluster_orchestrator.compression)."""
    if not entry.get("codec") and entry.get("edge") in (None, "-"):
        return f"compression: {entry.get('note', '')}"
    where = f"compression {entry.get('codec') or 'none'} on {entry.get('edge', '?')}"
    if not entry.get("codec"):
        return f"{where}: {entry.get('note', '')}"
    bound = entry.get("max_output_abs_diff")
    return (f"{where}: {entry.get('bytes_before')} -> {entry.get('bytes_after')} bytes, "
            f"{entry.get('predicted_ms_saved')} ms saved (predicted), outputs changed by "
            f"{float(entry.get('output_max_abs_diff') or 0.0):.3g}" + (f" (max {bound:g})" if bound else ""))


def cascade_line(entry: Mapping[str, Any]) -> str:
    """One line for the explanation's ``cascade`` (cluster_orchestrator.cascade): the small model,
    its edge node, the threshold and, when calibrated, what the probe set said."""
    line = (f"cascade: {entry.get('small')} on {entry.get('edge_node')} ({entry.get('edge_why')}), "
            f"escalates below {entry.get('confidence')} {float(entry.get('threshold') or 0.0):.4g}")
    calibration = entry.get("calibration")
    if isinstance(calibration, Mapping):
        share = 100.0 * float(calibration.get("escalated_share") or 0.0)
        line += (f"; calibrated for accuracy floor {calibration.get('floor')} on {calibration.get('probe')} "
                 f"({calibration.get('probe_size')} inputs, reference {calibration.get('reference')}): "
                 f"accuracy {calibration.get('accuracy')}, {share:.1f} % escalated")
    return line


def history_lines(events: list[Doc], indent: str = "  ") -> list[str]:
    if not events:
        return [f"{indent}(no events)"]
    return [f"{indent}{age(e.get('ts')):>4} ago  {e.get('kind')}  {e.get('cause') or ''}"
            f"{'  (' + event_detail(e) + ')' if event_detail(e) else ''}" for e in events]


ROLLOUT_EVENTS = ("rollout_requested", "rollout_started", "canary_share", "rollout_check", "promoted",
                  "rolled_back")


def rollout_lines(events: list[Doc]) -> list[str]:
    """The newest rollout step (cluster_orchestrator.rollout) in one line, with its reason; [] if none."""
    last = next((e for e in reversed(events) if e.get("kind") in ROLLOUT_EVENTS), None)
    if last is None:
        return []
    share = last.get("share")
    words = last.get("reason") or (f"{float(share):.0%} of requests to the canary"
                                   if isinstance(share, int | float) else "")
    return [f"Rollout:      {last.get('kind')} ({last.get('cause') or ''})" + (f": {words}" if words else "")]


def describe_service(world: World, service: Doc) -> tuple[Doc, list[str]]:
    """The service's document (with its events) and its description."""
    events = world.client.service_events(str(service.get("service_id")))
    names = world.node_names()
    app = world.app_names().get(str(service.get("application_id")), "?")
    if is_training(service):
        placement = ["Placement:", *training_placement_lines(service.get("explanation"), names)]
        result = registered_model(events)
        placement += [f"Result:       {result or '(none yet)'}" + (" (registered)" if result else "")]
    else:
        placement = ["Placement:", *placement_lines(service.get("placement") or {}),
                     "Scheduler:", *explanation_lines(service, names)]
    lines = [
        f"Service:      {service.get('microservice_name')} ({service.get('service_id')})",
        f"Application:  {app} ({service.get('application_id')})",
        f"Status:       {service.get('status')}"
        + (f" - {service.get('status_detail')}" if service.get("status_detail")
           and (service.get("status") != "FAILED" or is_training(service)) else ""),
        f"Model:        {model_ref(service)}",
        *rollout_lines(events),
        f"Cluster:      {service.get('cluster_id') or '-'}",
        *placement,
        "History:", *history_lines(events),
    ]
    return {**service, "events": events}, lines


def describe_app(world: World, app: Doc) -> tuple[Doc, list[str]]:
    services = [s for s in world.services if s.get("application_id") == app_id(app)]
    lines = [f"Application:  {app.get('application_name')} ({app_id(app)})",
             f"Namespace:    {app.get('application_namespace') or '-'}",
             f"Owner:        {app.get('userId') or app.get('customerID') or '-'}",
             f"Description:  {app.get('application_desc') or '-'}",
             f"Services ({len(services)}):"]
    for service in services:
        lines.append(f"  {service.get('microservice_name')} ({service.get('service_id')}): "
                     f"{service.get('status')}, model {model_ref(service)}, "
                     f"{plural(len(stages_of(service)), 'stage')}")
    return {**app, "services": services}, lines


def describe_node(world: World, node: Doc) -> tuple[Doc, list[str]]:
    tele = node.get("telemetry") or {}
    lines = [f"Node:         {node.get('name')} ({node.get('node_id')})",
             f"Cluster:      {node.get('cluster_name')}",
             f"Online:       {yes_no(node.get('online'))}, last seen {age(node.get('last_seen'))} ago",
             f"Profile:      {node.get('profile')}{' (emulated)' if node.get('emulated') else ''}, "
             f"speed factor {node.get('speed_factor')}, device class {node.get('device_class', '-')}",
             f"Hardware:     {node.get('arch')}, {node.get('cpu_count')} CPUs, "
             f"memory limit {node.get('memory_limit_mb')} MB, accelerators "
             f"{', '.join(node.get('accelerators') or []) or 'none'}",
             f"Labels:       {', '.join(node.get('labels') or []) or '-'}",
             f"Data plane:   {node.get('data_endpoint')}",
             f"Telemetry:    CPU {tele.get('cpu_percent', '-')}%, memory {tele.get('memory_percent', '-')}%, "
             f"battery {(tele.get('battery') or {}).get('percent', '-') if tele.get('battery') else '-'}",
             *device_lines(tele),
             f"Stages ({len(tele.get('stages') or [])}):",
             *[f"  {key}" for key in tele.get("stages") or []]]
    return node, lines


def _rate(value: Any) -> str:
    return f"{float(value) / 1e3:.1f} kB/s" if isinstance(value, int | float) else "-"


def device_lines(tele: Mapping[str, Any]) -> list[str]:
    """The device readings of a node's telemetry (node_engine.sources): GPUs, power, disk, network,
    temperatures, and which sources are absent or failing. Nothing for a node that sends none."""
    lines = []
    for gpu in tele.get("gpus") or []:
        figure = {k: "-" if v is None else v for k, v in gpu.items()}
        lines.append(f"{'GPU ' + str(figure.get('index')) + ':':<14}{figure.get('name')}, "
                     f"use {figure.get('utilization_percent')}%, "
                     f"memory {figure.get('memory_used_mb')}/{figure.get('memory_total_mb')} MB, "
                     f"{figure.get('temperature_c')} °C, {figure.get('power_w')} W")
    if power := tele.get("power"):
        lines.append(f"Power:        {power.get('watts')} W ({power.get('source')}"
                     f"{', estimated' if power.get('estimated') else ''})")
    if disk := tele.get("disk"):
        lines.append(f"Disk:         {disk.get('percent')}% of {disk.get('total_mb')} MB used "
                     f"({disk.get('path')}), read {_rate(disk.get('read_bytes_per_s'))}, "
                     f"write {_rate(disk.get('write_bytes_per_s'))}")
    if network := tele.get("network"):
        lines.append(f"Network:      in {_rate(network.get('rx_bytes_per_s'))}, out "
                     f"{_rate(network.get('tx_bytes_per_s'))} ({', '.join(network.get('interfaces') or [])})")
    if temperatures := tele.get("temperatures_c"):
        lines.append("Temperatures: " + ", ".join(f"{k} {v} °C" for k, v in temperatures.items()))
    sources = tele.get("sources") or {}
    for state in ("absent", "emulated"):
        names = [n for n, s in sources.items() if s == state]
        if names:
            lines.append(f"{state.capitalize() + ':':<14}{', '.join(names)}")
    lines += [f"Source error: {n}: {s.removeprefix('error: ')}" for n, s in sources.items()
              if s.startswith("error: ")]
    return lines


def describe_cluster(world: World, cluster: Doc) -> tuple[Doc, list[str]]:
    aggregate = cluster.get("aggregate") or {}
    lines = [f"Cluster:      {cluster.get('cluster_name')} ({cluster.get('cluster_id')})",
             f"URL:          {cluster.get('url')}",
             f"Active:       {yes_no(cluster.get('active', True))}, "
             f"last push {age(cluster.get('last_push'))} ago",
             f"Location:     {cluster.get('cluster_location') or '-'}",
             "Aggregate:",
             *[f"  {k}: {v}" for k, v in sorted(aggregate.items())]]
    return cluster, lines


def describe_model(world: World, model: Doc) -> tuple[Doc, list[str]]:
    name = str(model.get("name"))
    if "version" in model:  # NAME:VERSION asked for one version
        versions = [model]
    else:
        versions = world.client.model_versions(name)
    lines = [f"Model:        {name}"]
    for version in versions:
        profiles = world.client.model_profiles(name, int(version["version"]))
        signature = version.get("signature") or {}
        inputs = ", ".join(f"{i.get('name')} {i.get('dtype')} {i.get('shape')}"
                           for i in signature.get("inputs") or [])
        aliases = f", aliases {', '.join(version.get('aliases') or [])}" if version.get("aliases") else ""
        lines += [f"Version {version.get('version')}: {int(version.get('size') or 0) / 1e6:.2f} MB, "
                  f"sha256 {str(version.get('sha256'))[:16]}, "
                  f"created {age(version.get('created_at'))} ago{aliases}",
                  f"  inputs:   {inputs or '-'}",
                  f"  profiled: {', '.join(sorted(profiles)) or 'not yet (on first deployment)'}"]
        version["profiles"] = sorted(profiles)
    return {**model, "versions": versions}, lines


DESCRIBERS = {
    "services": describe_service,
    "deployments": describe_service,
    "apps": describe_app,
    "nodes": describe_node,
    "clusters": describe_cluster,
    "models": describe_model,
}
