"""What one cluster orchestrator holds: 1,000 simulated nodes against a real cluster and broker.

Run ``python -m benchmarks.hierarchy_cluster [--quick] [--json PATH]``; ``benchmarks.hierarchy``
imports :func:`measure_cluster`. Real processes on loopback: Mosquitto (with the per-node
identities and ACL ``treeline up`` sets up), a root (it holds the model artifacts and the
profiles) and one cluster orchestrator, started by :mod:`treeline_cli.stack` with no node
engine; the nodes are :mod:`node_engine.simulator` virtual nodes in this process (real REST
registration and MQTT payloads, stages held but not run, synthetic profiles). Goals in brackets.

- ``cluster_cpu_percent_1000_nodes`` [<= 50]: CPU of the cluster process (psutil, % of one
  core) over a steady window with every node sending telemetry every 2 s and the deployments
  running (the window starts after they are RUNNING and nothing polls the cluster meanwhile);
  ``cluster_rss_mb_1000_nodes`` its resident memory at the end of the window;
  ``simulator_cpu_percent`` what the simulator itself used meanwhile (it shares the machine).
- ``schedule_ms_p50_1000_nodes`` [<= 200]: wall time of the cluster's dry-run ``POST /api/plan``
  for one ML deployment of a small model against every node (the decide step a deployment runs:
  snapshot, cost model with the stored profiles, ML scheduler), median of several.
- ``nodes_online_s``: from the simulator's start (registration included) until the cluster's
  ``GET /api/nodes`` shows every node online; ``nodes_registered_s`` the registration part.
- ``deployments_running_s``: ``deployments`` small-model deployments (tiny DAG CNN, at most 2
  partitions) submitted to the root at once, until every one is RUNNING at the root on virtual
  nodes (includes the synthetic profiling of the model by one node per device class).
- ``mass_will_offline_s``: the simulator killed (every TCP connection reset: the broker
  publishes 1,000 last wills), until the cluster shows every node offline (multiplexed mode: no
  wills, detection by missed heartbeats). ``mass_will_replan_attempts``: deployment attempts
  (events ``replan``/``deployed``/``retry``/``failed``/``kept``) the kill caused, over all
  deployments, counted once the cluster settled; ``..._max_per_deployment`` [<= 1] the most any
  one deployment saw.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from benchmarks.report import add_json_option, benchmark_parser, report
from model_zoo.tiny import INPUT_SHAPE, tiny_dag_bytes
from node_engine.simulator import MULTIPLEXED, PER_NODE, Fleet, FleetConfig
from treeline_cli.broker import mosquitto_binary
from treeline_cli.root_client import RootClient
from treeline_cli.stack import Stack, StackConfig, pick_ports, start_stack
from treeline_common.http import call_json
from treeline_common.jobs import JobRequest, ModelRef
from treeline_common.netutil import poll_until

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
GOALS = {"cluster_cpu_percent_1000_nodes": "<= 50", "schedule_ms_p50_1000_nodes": "<= 200",
         "mass_will_replan_attempts_max_per_deployment": "<= 1"}
ATTEMPT_EVENTS = frozenset({"replan", "deployed", "retry", "failed", "kept"})
MODEL_NAME = "tiny-sim"


# ---------------------------------------------------------------- the stack


@contextmanager
def cluster_stack(data_dir: Path, *, telemetry_interval: float = 2.0, heartbeat_misses: int = 3,
                  cluster_args: Sequence[str] = ()) -> Iterator[Stack]:
    """Broker, root and one cluster orchestrator (no node engine), every port a free one."""
    if not mosquitto_binary():
        raise RuntimeError("the hierarchy benchmark needs Mosquitto (amqtt cannot carry 1,000 sessions)")
    stack = start_stack(pick_ports(StackConfig(
        data_dir=data_dir, nodes=0, broker_kind="mosquitto", telemetry_interval=telemetry_interval,
        heartbeat_misses=heartbeat_misses, node_labels={}, log_level="WARNING",
        cluster_args=tuple(cluster_args))))
    try:
        stack.wait_ready(timeout=60)
        yield stack
    finally:
        stack.stop(timeout=10)


def fleet_config(stack: Stack, nodes: int, mode: str = PER_NODE, **overrides: Any) -> FleetConfig:
    """A simulator fleet registering with ``stack``'s cluster (its join token; multiplexed mode
    logs in as the cluster's MQTT identity, the only one the ACL lets publish for every node)."""
    return FleetConfig(stack.cluster_url, nodes=nodes, mode=mode, join_token=stack.join_token,
                       mqtt_username=stack.mqtt_username or None, mqtt_password=stack.mqtt_password or None,
                       **overrides)


def node_states(stack: Stack) -> tuple[int, int]:
    """``(online, registered)`` nodes in the cluster's ``GET /api/nodes``."""
    nodes = call_json("GET", f"{stack.cluster_url}/api/nodes", timeout=30)["nodes"]
    return sum(1 for n in nodes if n.get("online")), len(nodes)


def wait_online_count(stack: Stack, want: int, timeout: float, interval: float = 0.25) -> float:
    """Seconds until exactly ``want`` nodes are online at the cluster."""
    start = time.monotonic()
    poll_until(lambda: node_states(stack)[0] == want, timeout, interval=interval,
               what=f"{want} nodes online at the cluster")
    return time.monotonic() - start


# ---------------------------------------------------------------- deployments


def register_tiny_model(stack: Stack) -> dict[str, Any]:
    """The tiny DAG CNN as ``MODEL_NAME`` at the root; its version document."""
    return RootClient(stack.root_url).register_model(MODEL_NAME, tiny_dag_bytes(0))


def tiny_microservice(name: str, max_partitions: int = 2) -> dict[str, Any]:
    model = {"name": MODEL_NAME, "version": "latest", "max_partitions": max_partitions, "variants": ["fp32"],
             "input": {"name": "input", "shape": list(INPUT_SHAPE), "dtype": "float32"},
             "objective": "latency", "accuracy_floor": 0.0}
    return {"microserviceID": "", "microservice_name": name, "microservice_namespace": "sim",
            "virtualization": "ml-model", "memory": 64, "vcpus": 1, "vgpus": 0, "vtpus": 0,
            "bandwidth_in": 0, "bandwidth_out": 0, "storage": 0, "state": "", "added_files": [],
            "model": model, "constraints": [], "connectivity": []}


def tiny_sla(app_name: str) -> dict[str, Any]:
    return {"sla_version": "v2.0", "customerID": "Admin",
            "applications": [{"applicationID": "", "application_name": app_name,
                              "application_namespace": "sim", "application_desc": "simulated fleet",
                              "microservices": [tiny_microservice("svc")]}]}


def submit_deployments(stack: Stack, count: int, prefix: str = "sim") -> list[tuple[str, int]]:
    """Submit ``count`` one-service SLAs of the tiny model to the root; ``[(service_id, instance)]``."""
    root = RootClient(stack.root_url)
    submitted = []
    for i in range(count):
        [application] = root.submit_sla(tiny_sla(f"{prefix}{i}"))
        [service_id] = application["microservices"]
        answer = root.deploy_service(service_id)
        submitted.append((str(service_id), int(answer.get("instance", 0))))
    return submitted


def wait_all_running(stack: Stack, services: Sequence[tuple[str, int]], timeout: float) -> float:
    """Seconds until the root shows every service RUNNING."""
    root = RootClient(stack.root_url)
    start = time.monotonic()
    waiting = {s for s, _ in services}

    def done() -> bool:
        waiting.difference_update({s for s in list(waiting) if root.service(s).get("status") == "RUNNING"})
        return not waiting

    poll_until(done, timeout, interval=0.5, what=f"{len(services)} deployments RUNNING")
    return time.monotonic() - start


def cluster_deployment(stack: Stack, service_id: str, instance: int) -> dict[str, Any]:
    return dict(call_json("GET", f"{stack.cluster_url}/api/deployments/{service_id}/{instance}", timeout=10))


def attempts_since(stack: Stack, services: Sequence[tuple[str, int]], since: float) -> list[int]:
    """Per deployment: attempt events (``ATTEMPT_EVENTS``) stamped at or after ``since`` (wall clock)."""
    return [sum(1 for e in cluster_deployment(stack, s, i).get("events") or []
                if e.get("kind") in ATTEMPT_EVENTS and float(e.get("ts") or 0.0) >= since)
            for s, i in services]


def plan_times_ms(stack: Stack, version: dict[str, Any], runs: int) -> list[float]:
    """Wall ms of ``runs`` dry-run plans (``POST /api/plan``) of one tiny-model deployment."""
    job = JobRequest(service_id="plan-probe", instance=0, microservice=tiny_microservice("probe"),
                     model=ModelRef(name=MODEL_NAME, version=int(version["version"]),
                                    sha256=str(version["sha256"])),
                     root_url=stack.root_url).to_dict()
    headers = {"Authorization": f"Bearer {stack.cluster_token}"} if stack.cluster_token else None
    times = []
    for _ in range(runs + 1):  # the first fetches and parses the model: not counted
        start = time.perf_counter()
        answer = call_json("POST", f"{stack.cluster_url}/api/plan", json=job, headers=headers, timeout=60)
        times.append((time.perf_counter() - start) * 1000.0)
        if not answer.get("schedulable"):
            raise RuntimeError(f"the probe deployment is unschedulable: {answer.get('message')}")
    return times[1:]


def cpu_window(pid: int, seconds: float) -> tuple[float, float, float]:
    """``(cpu %, rss MB)`` of process ``pid`` over ``seconds``, and the CPU % of this process
    (the simulator) over the same window; % of one core."""
    process, own = psutil.Process(pid), psutil.Process()
    process.cpu_percent(None)
    own.cpu_percent(None)
    time.sleep(seconds)  # the measurement window itself, not a wait for a condition
    return float(process.cpu_percent(None)), process.memory_info().rss / 2**20, float(own.cpu_percent(None))


# ---------------------------------------------------------------- the measurement


def measure_cluster(nodes: int = 1000, deployments: int = 100, mode: str = PER_NODE,
                    progress: Progress | None = None, *, steady_s: float = 20.0,
                    plan_runs: int = 10) -> dict[str, float]:
    """Start a stack and a fleet of ``nodes`` virtual nodes, measure (see the module docstring).

    Keys: ``cluster_cpu_percent_1000_nodes``, ``cluster_rss_mb_1000_nodes``, ``simulator_cpu_percent``,
    ``schedule_ms_p50_1000_nodes``, ``schedule_ms_max_1000_nodes``, ``nodes_registered_s``,
    ``nodes_online_s``, ``deployments_running_s``, ``mass_will_offline_s``, ``mass_will_replan_attempts``,
    ``mass_will_replan_attempts_max_per_deployment``, plus ``nodes`` and ``deployments``
    (the ``_1000_nodes`` names are kept whatever ``nodes`` is: ``nodes`` says how many).
    """
    say = progress or log.info
    result: dict[str, float] = {"nodes": float(nodes), "deployments": float(deployments)}
    with tempfile.TemporaryDirectory(prefix="treeline-hierarchy-") as tmp, cluster_stack(Path(tmp)) as stack:
        version = register_tiny_model(stack)
        say(f"starting {nodes} virtual nodes ({mode})")
        fleet = Fleet(fleet_config(stack, nodes, mode))
        start = time.monotonic()
        try:
            fleet.start()
            result["nodes_registered_s"] = time.monotonic() - start
            wait_online_count(stack, nodes, timeout=120)
            result["nodes_online_s"] = time.monotonic() - start
            say(f"{nodes} nodes online in {result['nodes_online_s']:.1f} s; {deployments} deployments")
            services = submit_deployments(stack, deployments)
            result["deployments_running_s"] = wait_all_running(stack, services, timeout=300)
            say(f"deployments RUNNING in {result['deployments_running_s']:.1f} s; planning probe")
            times = plan_times_ms(stack, version, plan_runs)
            result["schedule_ms_p50_1000_nodes"] = float(statistics.median(times))
            result["schedule_ms_max_1000_nodes"] = max(times)
            say(f"steady window of {steady_s:.0f} s")
            cpu, rss, own = cpu_window(stack.process("cluster").pid, steady_s)
            result["cluster_cpu_percent_1000_nodes"], result["cluster_rss_mb_1000_nodes"] = cpu, rss
            result["simulator_cpu_percent"] = own
            say("killing the simulator")
            killed_at = time.time()
            start = time.monotonic()
            fleet.kill()
            wait_online_count(stack, 0, timeout=120)
            result["mass_will_offline_s"] = time.monotonic() - start
            # settled: nothing held, no worker running, every deployment FAILED (no capacity left)
            poll_until(lambda: all(cluster_deployment(stack, s, i).get("status") == "FAILED"
                                   for s, i in services),
                       60, interval=0.5, what="every deployment FAILED for want of nodes")
            attempts = attempts_since(stack, services, killed_at)
            result["mass_will_replan_attempts"] = float(sum(attempts))
            result["mass_will_replan_attempts_max_per_deployment"] = float(max(attempts, default=0))
        finally:
            fleet.kill()
    return result


def run(quick: bool = False) -> dict[str, Any]:
    """Per-node sessions (the real fleet's cost); the full run adds the multiplexed mode under
    ``multiplexed_*`` (the cluster's cost without 1,000 broker sessions; no last wills, so its
    ``mass_will_offline_s`` is heartbeat detection, held as mass silence)."""
    nodes, deployments = (300, 20) if quick else (1000, 100)
    result: dict[str, Any] = {"mode": "quick" if quick else "full", "goals": GOALS,
                              "cpu_count": psutil.cpu_count()}
    result.update(measure_cluster(nodes, deployments, PER_NODE, steady_s=10.0 if quick else 20.0))
    if not quick:
        muxed = measure_cluster(nodes, deployments, MULTIPLEXED, steady_s=20.0)
        result.update({f"multiplexed_{k}": v for k, v in muxed.items() if k not in ("nodes", "deployments")})
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "300 nodes and 20 deployments instead of 1,000 and 100")
    add_json_option(parser, "hierarchy_cluster")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("node_engine").setLevel(logging.WARNING)
    logging.getLogger("treeline_cli.stack").setLevel(logging.WARNING)
    report(run(args.quick), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
