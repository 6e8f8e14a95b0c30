"""A whole stack (``treeline_cli.stack``: Mosquitto, root, cluster, two node engines as processes)
with identities on: nodes join with the stack's join token, log in to the broker with their own
credentials (added while the broker runs), a model is deployed and answers. Around it:

* the stack's broker refuses anonymous clients; a node identity cannot reach another node's
  control topic;
* node registration without the join token is 401, the cluster's job routes without the root's
  token are 401 (the root's own calls carry it: the deployment above went through them);
* another identity cannot take the cluster's name over at the root (409), and the stack's
  secrets survive in its data directory.
"""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import requests
from treeline_fault_harness import chain_model, deploy, model_sla, register_model

from treeline_cli.broker import mosquitto_binary
from treeline_cli.stack import Stack, StackConfig, pick_ports, start_stack
from treeline_common import topics

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not mosquitto_binary(), reason="mosquitto is not installed")]

REG = {"name": "acl-probe", "profile": "server", "emulated": True, "arch": "x86_64", "cpu_count": 2,
       "memory_limit_mb": 0, "speed_factor": 1.0, "data_endpoint": "tcp://127.0.0.1:9"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = pick_ports(StackConfig(data_dir=tmp_path_factory.mktemp("acl-stack"), nodes=2,
                                    profiles=("server", "server"), broker_kind="mosquitto", node_threads=1,
                                    telemetry_interval=1.0, push_interval=2.0, node_labels={}))
    running = start_stack(config)
    try:
        running.wait_ready(timeout=60)
        yield running
    finally:
        running.stop()


def connects(stack: Stack, username: str | None, password: str | None = None) -> bool:
    assert stack.broker is not None
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    if username:
        client.username_pw_set(username, password)
    answers: list[bool] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: answers.append(not reason.is_failure)
    client.connect(stack.broker.host, stack.broker.port)
    client.loop_start()
    deadline = time.monotonic() + 5
    while not answers and time.monotonic() < deadline:
        time.sleep(0.02)
    client.disconnect()
    client.loop_stop()
    return bool(answers and answers[0])


def test_nodes_join_with_their_own_identity_and_a_deployment_answers(stack: Stack) -> None:
    assert stack.broker is not None
    log = stack.broker.log_path.read_text()
    nodes = requests.get(f"{stack.cluster_url}/api/nodes", timeout=5).json()["nodes"]
    for node in nodes:  # each node logged in as its node id (the broker's log names the user)
        assert f"u'{node['node_id']}'" in log, log[-3000:]
    assert "u'treeline-cluster'" in log
    register_model(stack, "chain", chain_model())
    deployment = deploy(stack, model_sla("acl", "chain", [1, 32], max_partitions=2))
    assert deployment.service_id


def test_the_stacks_broker_refuses_anonymous_clients_and_spoofed_commands(stack: Stack) -> None:
    assert not connects(stack, None)
    assert not connects(stack, stack.mqtt_username, "wrong")
    assert connects(stack, stack.mqtt_username, stack.mqtt_password)

    probe = requests.post(f"{stack.cluster_url}/api/node/register", json=REG, timeout=10,
                          headers={"Authorization": f"Bearer {stack.join_token}"}).json()
    victim = next(n for n in requests.get(f"{stack.cluster_url}/api/nodes", timeout=5).json()["nodes"]
                  if n["name"] == "server-1")
    assert stack.broker is not None
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    watcher.username_pw_set(stack.mqtt_username, stack.mqtt_password)
    seen: list[str] = []
    subscribed = threading.Event()
    watcher.on_message = lambda _c, _u, msg: seen.append(msg.topic)
    watcher.on_subscribe = lambda *_a: subscribed.set()
    watcher.connect(stack.broker.host, stack.broker.port)
    watcher.subscribe(f"nodes/{victim['node_id']}/control/#", qos=1)
    watcher.loop_start()
    spoofer = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    spoofer.username_pw_set(probe["mqtt_username"], probe["mqtt_password"])
    spoofer.connect(stack.broker.host, stack.broker.port)
    spoofer.loop_start()
    try:
        assert subscribed.wait(5)
        spoofer.publish(topics.control_delete(victim["node_id"]), b'{"v": 1}', qos=1).wait_for_publish(5)
        # barrier: the spoof was acknowledged, so handled, before the watcher (the cluster's identity)
        # publishes this marker; the broker delivers in order, so a spoof let through comes first
        barrier = topics.control_profile(victim["node_id"])
        watcher.publish(barrier, b"barrier", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while barrier not in seen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert seen == [barrier]
    finally:
        for client in (watcher, spoofer):
            client.disconnect()
            client.loop_stop()
    assert victim["online"]


def test_the_cluster_wants_its_join_token_and_the_roots_token(stack: Stack) -> None:
    answer = requests.post(f"{stack.cluster_url}/api/node/register", json={**REG, "name": "no-token"},
                           timeout=10)
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "UNAUTHORIZED"
    for method, path in (("POST", "/api/plan"), ("POST", "/api/service/s/0"), ("DELETE", "/api/service/s/0"),
                         ("POST", "/api/models/profile")):
        answer = requests.request(method, f"{stack.cluster_url}{path}", json={}, timeout=10)
        assert answer.status_code == 401, (path, answer.text)
        assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_the_cluster_name_cannot_be_taken_over_at_the_root(stack: Stack) -> None:
    login = requests.post(f"{stack.root_url}/api/auth/login", json={"username": "Admin", "password": "Admin"},
                          timeout=10).json()
    admin = {"Authorization": f"Bearer {login['token']}"}
    other = requests.post(f"{stack.root_url}/api/clusters/tokens", json={"name": "intruder"}, headers=admin,
                          timeout=10).json()["token"]
    taken = requests.post(f"{stack.root_url}/api/clusters/register", timeout=10,
                          json={"cluster_name": "cluster-1", "url": "http://127.0.0.1:9"},
                          headers={"Authorization": f"Bearer {other}"})
    assert taken.status_code == 409, taken.text
    clusters = requests.get(f"{stack.root_url}/api/clusters/", headers=admin, timeout=10).json()
    assert [c["url"] for c in clusters if c["cluster_name"] == "cluster-1"] == [stack.cluster_url]


def test_the_stacks_secrets_are_kept_private_in_its_data_dir(stack: Stack) -> None:
    path = Path(stack.config.data_dir) / "stack_secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secrets = {"cluster_token": stack.cluster_token, "join_token": stack.join_token}
    assert json.loads(path.read_text()) == secrets
    for name in ("passwd", "acl"):
        assert stat.S_IMODE((Path(stack.config.data_dir) / "broker" / name).stat().st_mode) == 0o600
