"""``treeline`` console script: up, deploy, infer, demo."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from treeline_common.errors import TreelineError
from treeline_common.profiles import PROFILES
from treeline_common.shutdown import ShutdownSignal

DEFAULT_ROOT_URL = os.environ.get("TREELINE_ROOT_URL", "http://127.0.0.1:10000")


def _stack_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=3, help="number of node engines (default 3)")
    parser.add_argument("--profiles", default="server,jetson-nano,rpi4",
                        help="comma-separated emulation profiles, cycled over the nodes; "
                             f"known: {', '.join(PROFILES)}")
    parser.add_argument("--mqtt-url", default=None, help="use this broker instead of starting one")
    parser.add_argument("--broker", choices=("auto", "mosquitto", "amqtt"), default="auto",
                        help="broker to start when --mqtt-url is not given (auto: mosquitto if installed)")
    parser.add_argument("--data-dir", type=Path, default=None, help="state directory (default ./.treeline)")
    parser.add_argument("--root-port", type=int, default=10000)
    parser.add_argument("--cluster-port", type=int, default=10100)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads per node (0 = default)")
    parser.add_argument("--node-label", action="append", default=None, metavar="NAME=LABEL[,LABEL]",
                        help="extra labels of a node, e.g. rpi4-1=camera (the default); repeatable")


def _config(args: argparse.Namespace) -> Any:
    from treeline_cli.stack import StackConfig, default_data_dir

    profiles = tuple(p.strip() for p in args.profiles.split(",") if p.strip())
    extra: dict[str, Any] = {}
    if args.node_label is not None:
        pairs = [item.partition("=") for item in args.node_label]
        if any(not name or not sep for name, sep, _ in pairs):
            raise SystemExit("error: --node-label takes NAME=LABEL[,LABEL]")
        extra["node_labels"] = {name: labels for name, _, labels in pairs}
    return StackConfig(
        data_dir=(args.data_dir or default_data_dir()).resolve(),
        nodes=args.nodes,
        profiles=profiles,
        mqtt_url=args.mqtt_url,
        broker_kind=args.broker,
        root_port=args.root_port,
        cluster_port=args.cluster_port,
        node_threads=args.threads,
        log_level="DEBUG" if args.verbose else "INFO",
        **extra,
    )


def _wait_for_signal(stack: Any) -> None:
    """Block until SIGINT/SIGTERM; report children that die meanwhile."""
    shutdown = ShutdownSignal()
    reported: set[str] = set()
    while not shutdown.wait(1.0):
        for managed in stack.processes:
            if not managed.alive() and managed.name not in reported:
                reported.add(managed.name)
                print(f"warning: {managed.name} exited with {managed.process.returncode}; "
                      f"see {managed.log_path}", file=sys.stderr)


@contextlib.contextmanager
def _ready_stack(args: argparse.Namespace) -> Iterator[Any]:
    """Start the stack from the command line's options, wait until it is ready, stop it after."""
    from treeline_cli.stack import start_stack

    config = _config(args)
    print(f"Starting Treeline: broker, root, cluster and {config.nodes} node engines "
          f"(state in {config.data_dir})")
    stack = start_stack(config)
    try:
        stack.wait_ready(timeout=args.timeout)
        yield stack
    finally:
        print("Stopping ...")
        stack.stop()


def cmd_up(args: argparse.Namespace) -> int:
    with _ready_stack(args) as stack:
        print(f"Root API      {stack.root_url}   (OpenAPI: {stack.root_url}/api/openapi.json)")
        print(f"Cluster API   {stack.cluster_url}")
        print(f"MQTT broker   {stack.mqtt_url}")
        print(f"Logs          {stack.config.data_dir / 'logs'}")
        print("Ready. Ctrl-C stops every process.")
        _wait_for_signal(stack)
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from treeline_cli.demo import deploy_file
    from treeline_cli.root_client import RootClient

    services = deploy_file(RootClient(args.root_url), Path(args.file), sys.stdout, timeout=args.timeout)
    for service in services:
        if args.json:
            print(json.dumps({"placement": service.get("placement"),
                              "explanation": service.get("explanation")}, indent=2))
            continue
        print(f"\n{service.get('microservice_name')} ({service['service_id']}) RUNNING")
        print(placement_summary(service))
    return 0


def placement_summary(service: dict[str, Any]) -> str:
    """Stages, nodes, predictions and the reasons for unused nodes, as a few readable lines."""
    from treeline_cli.demo import unused_nodes

    placement = service.get("placement") or {}
    lines = []
    if placement.get("relay"):
        lines.append(f"  entry: relay on {placement['relay'].get('node_name')} (where the input arrives)")
    for stage in placement.get("stages", []):
        lines.append(f"  stage {stage['index']}: {stage.get('node_name')} ({stage.get('profile')}), "
                     f"{stage.get('flops', 0) / 1e6:.0f} MFLOPs, "
                     f"sends {stage.get('cut_bytes', 0) / 1024:.1f} KB, "
                     f"predicted {stage.get('predicted_compute_ms', float('nan')):.2f} ms compute")
    predicted = placement.get("predicted") or {}
    if predicted:
        lines.append(f"  predicted: {predicted.get('latency_ms', 0):.2f} ms end to end, "
                     f"{predicted.get('throughput_rps', 0):.0f} req/s pipelined, "
                     f"{predicted.get('energy_mj', 0):.1f} mJ per inference")
    lines += [f"  not used: {name}: {reason}" for name, reason in unused_nodes(service)]
    return "\n".join(lines)


def cmd_infer(args: argparse.Namespace) -> int:
    from treeline_cli.inference import run_requests, service_resolver
    from treeline_cli.root_client import RootClient

    service = RootClient(args.root_url).find_service(args.app, args.service)
    if service.get("status") != "RUNNING":
        print(f"error: service {service['service_id']} is {service.get('status')}, not RUNNING",
              file=sys.stderr)
        return 1
    # the client follows the service: on a failure it re-resolves the entry from the root and
    # retries with the same request id, so a re-plan or a lost node costs no request
    report = run_requests(service["placement"], args.n, in_flight=args.in_flight,
                          resolver=service_resolver(args.root_url, service["service_id"]))
    print(f"{report.requests} requests to {service.get('microservice_name')} "
          f"({len(service['placement']['stages'])} stages, {report.in_flight} in flight), "
          f"{report.failed} failed")
    for reason, count in sorted(report.errors.items()):
        print(f"  {count} failed: {reason}", file=sys.stderr)
    print(f"p50 {report.p50_ms:.2f} ms   p99 {report.p99_ms:.2f} ms   "
          f"throughput {report.throughput_rps:.1f} req/s")
    for key, ms in report.stage_ms.items():
        link = report.link_ms.get(key)
        link_text = f", {link:.2f} ms link to the next stage" if link else ""
        print(f"  stage {key}: {ms:.2f} ms compute{link_text}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from treeline_cli.demo import run_demo

    with _ready_stack(args) as stack:
        print(f"Stack ready: root {stack.root_url}, cluster {stack.cluster_url}, broker {stack.mqtt_url}")
        run_demo(stack, sys.stdout, requests=args.requests)
        if args.keep:
            print("--keep: the stack keeps running. Ctrl-C stops every process.")
            _wait_for_signal(stack)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="treeline", description="Treeline edge-ML orchestrator")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start broker, root, cluster and node engines; Ctrl-C stops them")
    _stack_args(up)
    up.add_argument("--timeout", type=float, default=90.0)
    up.set_defaults(func=cmd_up)

    deploy = sub.add_parser("deploy", help="submit an SLA file and wait until it runs")
    deploy.add_argument("file")
    deploy.add_argument("--root-url", default=DEFAULT_ROOT_URL)
    deploy.add_argument("--timeout", type=float, default=180.0)
    deploy.add_argument("--json", action="store_true", help="print the placement and explanation as JSON")
    deploy.set_defaults(func=cmd_deploy)

    infer = sub.add_parser("infer", help="send random requests to a deployed model and print latency")
    infer.add_argument("app", help="application name or id, or a service id")
    infer.add_argument("--service", default=None, help="microservice name when the application has several")
    infer.add_argument("--n", type=int, default=100)
    infer.add_argument("--in-flight", type=int, default=1)
    infer.add_argument("--root-url", default=DEFAULT_ROOT_URL)
    infer.set_defaults(func=cmd_infer)

    demo = sub.add_parser("demo", help="up + register MobileNetV2 + deploy + 200 requests + table")
    _stack_args(demo)
    demo.add_argument("--requests", type=int, default=200)
    demo.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    demo.add_argument("--timeout", type=float, default=90.0)
    demo.set_defaults(func=cmd_demo)
    return parser


def _sigterm_as_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every ``finally: stack.stop()`` runs.
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except TreelineError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        for detail in exc.details:
            print(f"  {detail.get('path', '')}: {detail.get('message', detail)}", file=sys.stderr)
        return 1
    except (TimeoutError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
