"""``up`` (the whole stack as processes until Ctrl-C) and ``demo`` (up + MobileNetV2 + table).

Several clusters: ``--clusters N`` starts N clusters, each with its own broker; ``--nodes K`` puts
K node engines in each, ``--nodes K1,K2,...`` one count per cluster (the list alone implies
``--clusters`` of its length; a list of another length than ``--clusters`` is a usage error naming
``--nodes``). A list is a flag-only form: ``TREELINE_NODES`` and ``nodes`` in treeline.toml take one
count.

Every setting is checked (``--nodes 0``, an unknown profile) before anything starts, and so is
every port the stack will listen on: a port another process holds (another stack's, typically)
ends ``up`` at once with one line naming it, exit code 1 (a failure: the options are valid, the
machine is busy), before any process starts; two settings naming the same port is a usage
error (exit code 2). SIGTERM unwinds like Ctrl-C, so the stack is always stopped; children
also get a parent-death signal.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from treeline_cli.commands.common import invocation, output, setting, settings, verbose_option
from treeline_cli.errors import Failure, UsageError, classify
from treeline_cli.output import Output, plural
from treeline_cli.stack import PortInUse, Stack, StackConfig, check_ports, start_stack
from treeline_common.config import OPTIONS_BY_NAME, Settings
from treeline_common.profiles import PROFILES
from treeline_common.shutdown import ShutdownSignal

F = Any
NODES = OPTIONS_BY_NAME["nodes"]


def stack_options(f: F) -> F:
    for decorator in reversed([
        click.option("--clusters", type=click.IntRange(min=1), default=None, metavar="N",
                     help="cluster orchestrators to start, each with its own broker [default: 1, or the "
                          "length of a --nodes list]"),
        click.option(NODES.flag, "node_counts", default=None, callback=_store_nodes, metavar="N|N1,N2",
                     help=f"{NODES.help} in each cluster, or one count per cluster, e.g. 2,4 "
                          f"[env {NODES.env}: N]"),
        setting("profiles", metavar="P1,P2", help=f"emulation profiles cycled over the nodes; known: "
                                                  f"{', '.join(PROFILES)} [env TREELINE_PROFILES]"),
        setting("broker_url", "--mqtt-url", metavar="URL"),
        setting("broker", type=click.Choice(("auto", "mosquitto", "amqtt"))),
        click.option("--mongo-url", default=None, metavar="URL",
                     help="the MongoDB of the root and the clusters (each its own database), e.g. "
                          "mongodb://db:27017 [default: `up` starts the embedded MongoDB wire server, "
                          "data in DIR/mongo]"),
        setting("broker_port", metavar="PORT", help="port of the broker `up` starts for cluster 1 (0: a "
                                                    "free one each); cluster i's is PORT+i-1 "
                                                    "[env TREELINE_BROKER_PORT]"),
        setting("data_dir", metavar="DIR"),
        setting("root_port", metavar="PORT"),
        setting("cluster_port", metavar="PORT", help="port of cluster 1's orchestrator; cluster i listens on "
                                                     "PORT+i-1 [env TREELINE_CLUSTER_PORT]"),
        setting("threads", metavar="N"),
        setting("log_level", metavar="LEVEL"),
        click.option("--node-label", "node_labels", multiple=True, metavar="NAME=LABEL[,LABEL]",
                     help="extra labels of a node, e.g. rpi4-1=camera (the default); repeatable"),
        click.option("--timeout", type=click.FloatRange(min=1), default=90.0, show_default=True,
                     help="seconds to wait until every process is ready"),
        verbose_option,
    ]):
        f = decorator(f)
    return f


def _store_nodes(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...]:
    """``--nodes N`` becomes the ``nodes`` setting (checked with its source like any setting);
    ``--nodes N1,N2,...`` is returned as one count per cluster."""
    if value is None:
        return ()
    if "," not in value:
        invocation(ctx).flags["nodes"] = value
        return ()
    try:
        counts = tuple(int(item) for item in value.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 0 or sum(counts) < 1:
        raise UsageError(f"--nodes {value!r} is not N or a list N1,N2,... of node counts",
                         "give one count per cluster, e.g. --nodes 2,1")
    return counts


def cluster_layout(clusters: int | None, node_counts: tuple[int, ...]) -> dict[str, Any]:
    """The :class:`StackConfig` fields of ``--clusters`` and a ``--nodes`` list."""
    if node_counts and clusters is not None and len(node_counts) != clusters:
        counts, wanted = plural(len(node_counts), "count"), plural(clusters, "cluster")
        raise UsageError(f"--nodes lists {counts} for {wanted}",
                         f"give one count per cluster (e.g. --nodes {','.join(['1'] * clusters)}) "
                         f"or one count for every cluster")
    return {"clusters": clusters or len(node_counts) or 1, "nodes_per_cluster": node_counts}


def stack_config(config: Settings, node_labels: tuple[str, ...], verbose: bool,
                 layout: dict[str, Any] | None = None) -> StackConfig:
    extra: dict[str, Any] = dict(layout or {})
    if node_labels:
        pairs = [item.partition("=") for item in node_labels]
        bad = [item for item, (name, sep, _) in zip(node_labels, pairs, strict=True) if not name or not sep]
        if bad:
            raise UsageError(f"--node-label {bad[0]!r} is not NAME=LABEL[,LABEL]",
                             "e.g. --node-label rpi4-1=camera")
        extra["node_labels"] = {name: labels for name, _, labels in pairs}
    return StackConfig(
        data_dir=config.data_dir.resolve(),
        nodes=config.nodes,
        profiles=config.profiles,
        mqtt_url=config.broker_url,
        broker_kind=config.broker,
        root_port=config.root_port,
        cluster_port=config.cluster_port,
        broker_port=config.broker_port,
        node_threads=config.threads,
        log_level="DEBUG" if verbose else config.log_level,
        **extra,
    )


def _sigterm_as_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def check_stack_ports(config: StackConfig) -> None:
    """:func:`check_ports` as CLI errors: a busy port is a failure (1), a port named twice a usage
    error (2). Each names the setting that chose the port, in all three spellings."""
    try:
        check_ports(config)
    except PortInUse as exc:
        option = OPTIONS_BY_NAME[exc.claim.setting]
        raise Failure(str(exc), f"stop that process (another `treeline up`?) or choose another port with "
                                f"{option.flag} PORT (env {option.env}, or {option.name} in treeline.toml)"
                      ) from exc
    except ValueError as exc:
        raise UsageError(str(exc), "give each process its own port") from exc


@contextlib.contextmanager
def ready_stack(out: Output, node_labels: tuple[str, ...], timeout: float,
                layout: dict[str, Any] | None = None,
                adjust: Callable[[StackConfig], StackConfig] | None = None,
                prepare: Callable[[Stack], None] | None = None) -> Iterator[Stack]:
    """Start the stack from the settings, wait until it is ready, stop it afterwards.

    ``adjust`` rewrites the configuration first (a scenario's own devices and data dir);
    ``prepare`` runs on the started stack before the wait (it may add node engines)."""
    config = stack_config(settings(), node_labels, bool(out.verbose), layout)
    if adjust is not None:
        config = adjust(config)
    if config.mqtt_url and config.clusters > 1:
        raise UsageError(f"--mqtt-url names one broker and each of {config.clusters} clusters needs its own",
                         "leave --mqtt-url (TREELINE_BROKER_URL) unset: `up` starts one broker per cluster")
    try:
        config.validate()
    except ValueError as exc:
        raise UsageError(str(exc), "see `treeline up --help`") from exc
    check_stack_ports(config)  # before any output or process: a busy port is one line on stderr
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    logs = config.data_dir / "logs"
    what = ("broker, root, cluster" if config.clusters == 1
            else f"root, {config.clusters} clusters each with its own broker,")
    with out.step(f"starting {what} and {plural(config.total_nodes, 'node engine')} "
                  f"(state in {config.data_dir})"):
        try:
            stack = start_stack(config, timeout=timeout)
        except PortInUse as exc:  # taken between the check and the start
            raise Failure(str(exc), "stop that process or choose other ports") from exc
        except (OSError, RuntimeError, TimeoutError) as exc:
            raise Failure(f"could not start the stack: {str(exc).splitlines()[0]}",
                          f"see the logs in {logs}") from exc
    try:
        if prepare is not None:
            prepare(stack)
        clusters = "the cluster" if config.clusters == 1 else f"{config.clusters} clusters"
        with out.step(f"waiting until {clusters} and {plural(len(stack.node_names), 'node')} are online"):
            try:
                stack.wait_ready(timeout=timeout)
            except (RuntimeError, TimeoutError) as exc:
                raise Failure(str(exc).splitlines()[0], f"see the logs in {logs}") from exc
        yield stack
    finally:
        with out.step("stopping every process"):
            stack.stop()


def wait_for_signal(stack: Stack, out: Output) -> None:
    """Block until SIGINT/SIGTERM; report children that die meanwhile."""
    shutdown = ShutdownSignal()
    reported: set[str] = set()
    while not shutdown.wait(1.0):
        for managed in stack.processes:
            if not managed.alive() and managed.name not in reported:
                reported.add(managed.name)
                out.warn(f"{managed.name} exited with {managed.process.returncode}; see {managed.log_path}")


@click.command()
@stack_options
def up(node_labels: tuple[str, ...], timeout: float, clusters: int | None,
       node_counts: tuple[int, ...], mongo_url: str | None) -> None:
    """Start the root and one cluster (or --clusters N), each cluster with its own broker and
    node engines, each its own process; Ctrl-C or SIGTERM stops all of them."""
    out = output()
    layout = {**cluster_layout(clusters, node_counts), "mongo_url": mongo_url}
    with ready_stack(out, node_labels, timeout, layout) as stack:
        out.line(f"Root API      {stack.root_url}   (OpenAPI: {stack.root_url}/api/openapi.json)")
        where = "" if mongo_url else f"   (embedded, data in {stack.config.data_dir / 'mongo'})"
        out.line(f"MongoDB       {stack.mongo_url.split('@')[-1]}{where}")
        if len(stack.clusters) == 1:
            out.line(f"Cluster API   {stack.cluster_url}")
            out.line(f"MQTT broker   {stack.mqtt_url}")
        for cluster in stack.clusters if len(stack.clusters) > 1 else []:
            nodes = ", ".join(cluster.node_names) or "-"
            out.line(f"{cluster.name:<13} {cluster.url}   MQTT broker {cluster.mqtt_url}   nodes: {nodes}")
        out.line(f"Logs          {stack.config.data_dir / 'logs'}  (`treeline logs COMPONENT -f`)")
        out.line("Ready. Ctrl-C stops every process.")
        sys.stdout.flush()
        wait_for_signal(stack, out)


@click.command()
@stack_options
@click.option("--requests", type=click.IntRange(min=1), default=200, show_default=True,
              help="requests sent to each deployment")
@click.option("--keep", is_flag=True, help="leave the stack running afterwards (until Ctrl-C)")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="write the HTML report here  [default: <data dir>/report.html]")
@click.option("--scenario", "scenario_names", default=None, metavar="NAME[,NAME]",
              help="instead of the MobileNetV2 demo, run collaboration scenarios, each on its own devices: "
                   "too-big, throughput, camera, ... or all (figures in <data dir>/scenarios/NAME.json)")
@click.option("--quick", is_flag=True, help="with --scenario: fewer requests per alternative")
def demo(node_labels: tuple[str, ...], timeout: float, clusters: int | None, node_counts: tuple[int, ...],
         mongo_url: str | None, requests: int, keep: bool, report: Path | None, scenario_names: str | None,
         quick: bool) -> None:
    """up + register MobileNetV2 + deploy it three ways + send requests + print a table
    (--scenario NAME: where edge-cloud collaboration wins, see README)."""
    from treeline_cli.demo import run_demo  # imports torch-free model_zoo and numpy: only here

    out = output()
    if scenario_names is not None:
        if keep or report is not None:
            flag = "--keep" if keep else "--report"
            raise UsageError(f"{flag} applies to the MobileNetV2 demo, not to --scenario",
                             "each scenario stops its own stack; figures: <data dir>/scenarios/NAME.json")
        run_scenarios(out, scenario_names, quick, timeout, mongo_url)
        return
    layout = {**cluster_layout(clusters, node_counts), "mongo_url": mongo_url}
    with ready_stack(out, node_labels, timeout, layout) as stack:
        out.line(f"Stack ready: root {stack.root_url}, cluster {stack.cluster_url}, broker {stack.mqtt_url}")
        run_demo(stack, sys.stdout, requests=requests, report=report)
        if keep:
            out.line("--keep: the stack keeps running. Ctrl-C stops every process.")
            sys.stdout.flush()
            wait_for_signal(stack, out)


def run_scenarios(out: Output, names: str, quick: bool, timeout: float, mongo_url: str | None) -> None:
    """``demo --scenario``: each scenario on a stack of its own devices, one after the other."""
    from treeline_cli.scenarios import select  # numpy, onnx and onnxruntime: only here
    from treeline_cli.scenarios.base import add_nodes
    from treeline_cli.scenarios.runner import results_path, run_scenario, scenario_config

    try:
        chosen = select(names)
    except ValueError as exc:
        raise UsageError(f"--scenario: {exc}", "e.g. --scenario too-big or --scenario all") from exc
    data_dir = settings().data_dir.resolve()
    failed: list[str] = []
    for scenario in chosen:
        with ready_stack(out, (), timeout, {"mongo_url": mongo_url},
                         adjust=functools.partial(scenario_config, scenario=scenario),
                         prepare=functools.partial(add_nodes, spec=scenario.stack)) as stack:
            try:
                run_scenario(scenario, stack, sys.stdout, quick, results_path(data_dir, scenario))
            except Exception as exc:  # noqa: BLE001 - reported as main() would; the next scenarios still run
                line = (classify(exc).line() or type(exc).__name__).splitlines()[0]
                out.warn(f"scenario {scenario.name} failed: {line}")
                failed.append(scenario.name)
            sys.stdout.flush()
    if failed:
        raise Failure(f"{plural(len(failed), 'scenario')} failed: {', '.join(failed)}",
                      f"see the warnings above and the logs under {data_dir / 'scenarios'}")
