"""Hostile MQTT traffic from another client on the same broker.

(f) a spoofed retained ``offline`` status for a live node (the replay of its own will, and
one with a sequence number from the far future) must not pin the node offline: it is online
again within a few heartbeats, the retained status says ``online`` again, deployments keep
RUNNING and a retrying client loses no request.

(g) poison payloads (a string where a number belongs, JSON nested 100,000 deep, NaN, wrong
types, not JSON at all) on the cluster's and a node's topics are dropped: both processes
keep running, a good message that follows is processed, and deployments keep answering.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from treeline_fault_harness import (
    Traffic,
    chain_model,
    check_deployments,
    deploy,
    encode_json,
    join_headers,
    model_sla,
    model_stack,
    nested_json,
    node_id,
    nodes,
    publish_raw,
    record,
    retained,
    telemetry_body,
    wait_until,
)

from treeline_cli.stack import Stack
from treeline_common import topics
from treeline_common.http import call_json
from treeline_common.messages import NodeStatus, decode, encode

pytestmark = pytest.mark.integration

MODEL = chain_model()
FAR_FUTURE_SEQ = 2**53


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with model_stack(tmp_path, MODEL) as running:
        yield running


def retained_state(stack: Stack, node: str) -> NodeStatus | None:
    raw = retained(stack, topics.status(node), timeout=2)
    return decode(NodeStatus, raw) if raw else None


def test_f_spoofed_retained_offline_does_not_pin_a_live_node(stack: Stack) -> None:
    deployment = deploy(stack, model_sla("spoof", "chain", [1, 32]))
    victim = "server-2"
    victim_id = node_id(stack, victim)
    birth = retained_state(stack, victim_id)
    assert birth is not None and birth.state == "online"
    figures: dict[str, float] = {}
    with Traffic(stack.root_url, deployment.service_id, MODEL) as traffic:
        traffic.wait_answers(20, timeout=10)
        for label, seq in (("replayed_will", birth.seq), ("future_seq", FAR_FUTURE_SEQ)):
            spoofed_at = time.monotonic()
            spoof = NodeStatus(node_id=victim_id, state="offline", seq=seq, ts=time.time())
            publish_raw(stack, topics.status(victim_id), encode(spoof), retain=True)

            def online_again() -> bool:
                state = retained_state(stack, victim_id)
                return bool(nodes(stack)[victim]["online"] and state is not None and state.state == "online")

            wait_until(online_again, 10,
                       f"{victim} online again (API and retained status) after a {label} spoof")
            figures[f"{label}_online_again_s"] = round(time.monotonic() - spoofed_at, 3)
            # and it stays online: no later flip back from the retained spoof
            stable_from = time.monotonic()
            while time.monotonic() - stable_from < 2.0:
                assert nodes(stack)[victim]["online"], f"{victim} flipped offline after the {label} spoof"
                time.sleep(0.1)
        traffic.wait_answers(20, timeout=10)
    report = traffic.report
    record("f_spoofed_offline", **figures, **report.summary())
    check_deployments(stack, [deployment])
    assert report.failed == 0 and report.wrong == 0, report.summary()


POISON_TELEMETRY = {
    "cpu_percent_string": lambda n: encode_json(telemetry_body(n, cpu_percent="n/a")),
    "nested_100000": lambda n: nested_json(100_000),
    "nested_object_100000": lambda n: b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "nan": lambda n: json.dumps(telemetry_body(n, cpu_percent=float("nan"))).encode(),
    "infinity": lambda n: json.dumps(telemetry_body(n, memory_percent=float("inf"))).encode(),
    "wrong_type_int": lambda n: encode_json(telemetry_body(n, memory_total_mb="lots")),
    "wrong_type_list": lambda n: encode_json(telemetry_body(n, stages="all of them")),
    "wrong_type_bool_for_int": lambda n: encode_json(telemetry_body(n, cpu_count=True)),
    "out_of_range": lambda n: encode_json(telemetry_body(n, cpu_percent=1e9)),
    "top_level_list": lambda n: b"[1, 2, 3]",
    "not_json": lambda n: b"\xff\xfe\x00garbage",
    "empty_object": lambda n: b"{}",
    "wrong_version": lambda n: encode_json(telemetry_body(n, v=99)),
}


def test_g_poison_payloads_are_dropped_and_the_cluster_keeps_working(stack: Stack) -> None:
    deployment = deploy(stack, model_sla("poison", "chain", [1, 32]))
    # A probe node that only this test speaks for (memory 0: no plan can use it).
    probe = call_json("POST", f"{stack.cluster_url}/api/node/register", json={
        "name": "probe", "profile": "server", "arch": "x86_64", "cpu_count": 2, "memory_limit_mb": 0,
        "speed_factor": 1.0, "data_endpoint": "tcp://127.0.0.1:9"}, headers=join_headers(stack))["node_id"]
    real = node_id(stack, "server-1")

    def telemetry_of(name: str) -> dict:
        return nodes(stack)[name].get("telemetry") or {}

    def good(cpu: float) -> bytes:
        return encode_json(telemetry_body(probe, cpu_percent=cpu, memory_limit_mb=0))

    with Traffic(stack.root_url, deployment.service_id, MODEL) as traffic:
        traffic.wait_answers(20, timeout=10)
        publish_raw(stack, topics.information(probe), good(37.25))
        wait_until(lambda: telemetry_of("probe").get("cpu_percent") == 37.25, 5,
                   "the probe's first telemetry")
        for make in POISON_TELEMETRY.values():
            for target in (probe, real):
                publish_raw(stack, topics.information(target), make(target))
        for target in (probe, real):  # the other node -> cluster topics get their share
            for topic in (topics.status(target), topics.job(target), topics.job_resources(target)):
                for make in (POISON_TELEMETRY["nested_100000"], POISON_TELEMETRY["nan"],
                             POISON_TELEMETRY["cpu_percent_string"]):
                    publish_raw(stack, topic, make(target))
        # cluster -> node commands, poisoned: the node engine must drop them too
        for topic in (topics.control_deploy(real), topics.control_delete(real), topics.control_profile(real)):
            for make in (POISON_TELEMETRY["nested_100000"], POISON_TELEMETRY["nan"],
                         POISON_TELEMETRY["wrong_type_int"], POISON_TELEMETRY["not_json"]):
                publish_raw(stack, topic, make(real))

        # none of it was applied, and a good message that follows is
        assert telemetry_of("probe").get("cpu_percent") == 37.25
        publish_raw(stack, topics.information(probe), good(12.5))
        wait_until(lambda: telemetry_of("probe").get("cpu_percent") == 12.5, 5,
                   "the good telemetry sent after the poison to be processed")
        wait_until(lambda: nodes(stack)["server-1"]["online"], 5, "server-1 still online")
        traffic.wait_answers(20, timeout=10)
    report = traffic.report
    stack.check_alive()  # cluster and node engines survived
    later = deploy(stack, model_sla("after-poison", "chain", [1, 32]), timeout=30)
    record("g_poison_payloads", payloads=len(POISON_TELEMETRY), **report.summary())
    assert probe not in {s["node_id"] for s in later.placement()["stages"]}
    check_deployments(stack, [deployment, later])
    assert report.failed == 0 and report.wrong == 0, report.summary()
