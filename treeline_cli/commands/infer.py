"""``infer APP``: requests through a deployed service, then figures.

Every model input gets values valid for its kind (token ids inside the vocabulary, masks of
ones, images in [0, 1]: :mod:`treeline_cli.input_values`), or the caller's own arrays with
``--inputs FILE.npz`` (one array per input name). When requests fail, the command prints what
they carried (names, shapes, dtypes, value ranges), so a refusal can be told from a bug.

The target resolves strictly (:func:`treeline_cli.resolve.inference_target`): of several
applications with the name, the one RUNNING service wins; ``--service`` names a service of
the application, and a name it does not have is an error that lists the ones it has.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from treeline_cli.commands.common import output, output_option, root_client, root_options, root_url
from treeline_cli.errors import Failure
from treeline_cli.output import plural
from treeline_cli.resolve import inference_target
from treeline_cli.views import World
from treeline_common.jobs import JobStatus


def _finite(value: float) -> float | None:
    return value if isinstance(value, float) and math.isfinite(value) else None


@click.command()
@click.argument("app")
@click.option("--service", default=None, metavar="NAME", help="the service, when the application has several")
@click.option("--n", "n", type=click.IntRange(min=1), default=100, show_default=True, help="requests to send")
@click.option("--in-flight", type=click.IntRange(min=1), default=1, show_default=True,
              help="requests outstanding at once")
@click.option("--inputs", "inputs_file", default=None, metavar="FILE.npz",
              type=click.Path(dir_okay=False, path_type=Path),
              help="send these arrays (one per model input name; a leading axis of k = k samples)")
@output_option
@root_options
def infer(app: str, service: str | None, n: int, in_flight: int, inputs_file: Path | None) -> None:
    """Send N requests to APP (an application name or id, or a service id) with valid values for
    every model input (or the arrays of --inputs) and print p50/p99 latency, throughput and the
    compute ms of each stage."""
    # numpy + zmq: only when sending
    from treeline_cli.inference import run_requests, service_resolver
    from treeline_cli.input_values import InputFileError, describe, load_npz, placement_inputs, random_inputs

    out = output()
    world = World(root_client())
    target = inference_target(app, service, world.apps, world.services)
    name = f"{target.get('microservice_name')} ({target.get('service_id')})"
    if target.get("status") != JobStatus.RUNNING.value or not target.get("placement"):
        raise Failure(f"service {name} is {target.get('status')}, not RUNNING",
                      f"see `treeline describe service {target.get('service_id')}`")
    placement = target["placement"]
    stages = len(placement.get("stages") or [])
    specs = placement_inputs(placement)
    feed = None
    if inputs_file is not None:
        try:
            feed = load_npz(inputs_file, specs)
        except InputFileError as exc:
            raise Failure(str(exc), "give one array per model input: "
                          + ", ".join(f"{s.get('name')} {s.get('dtype')} {s.get('shape')}" for s in specs)
                          ) from None
    with out.step(f"sending {plural(n, 'request')} to {name}, {in_flight} in flight"):
        # the client follows the service: on a failure it re-resolves the entry from the root and
        # retries with the same request id, so a re-plan or a lost node costs no request
        report = run_requests(placement, n, in_flight=in_flight,
                              resolver=service_resolver(root_url(), str(target["service_id"])),
                              service=str(target["service_id"]), feed=feed)
    summary = {k: v for k, v in asdict(report).items() if k not in ("latencies_ms", "samples")}
    summary = {k: _finite(v) if isinstance(v, float) else v for k, v in summary.items()}
    doc: dict[str, Any] = {"service_id": target["service_id"],
                           "microservice_name": target.get("microservice_name"), "stages": stages, **summary}

    def render() -> None:
        out.line(f"{plural(report.requests, 'request')} answered by {target.get('microservice_name')} "
                 f"({plural(stages, 'stage')}, {report.in_flight} in flight), {report.failed} failed")
        out.line(f"p50 {report.p50_ms:.2f} ms   p99 {report.p99_ms:.2f} ms   "
                 f"throughput {report.throughput_rps:.1f} req/s")
        for key, ms in report.stage_ms.items():
            link = report.link_ms.get(key)
            link_text = f", {link:.2f} ms link to the next stage" if link else ""
            out.line(f"  stage {key}: {ms:.2f} ms compute{link_text}")
    out.result(doc, render)
    for reason, count in sorted(report.errors.items()):
        out.warn(f"{plural(count, 'request')} failed: {reason}")
    if report.failed:
        sample = feed[0] if feed else next(random_inputs(specs, 1))
        out.warn(f"the requests carried: {describe(sample)}")
    if report.failed and not report.requests:
        raise Failure(f"no request to {name} was answered", "see `treeline logs` of its nodes")
