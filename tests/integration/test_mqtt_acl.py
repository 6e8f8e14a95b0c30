"""MQTT identities and ACL on a real Mosquitto, with the files the cluster writes.

A cluster runtime (in this process) owns the broker's password and ACL files (``--mqtt-auth-dir``);
two nodes register over HTTP with the join token and get their own MQTT credentials (the broker
is signalled to reload and takes them at once). Checked on the wire:

* anonymous clients, wrong passwords and a node's previous password are refused;
* a node's publications under another node's prefix, or on any control topic (a spoofed deploy
  command), never reach a subscriber: neither the cluster nor the node addressed; its own
  publications do, and the cluster's control messages reach only the node they name, even when
  another node subscribes to ``nodes/#``;
* MQTT over TLS (certificates made with ``openssl`` at test time): a client verifying the broker
  with the CA connects with its credentials; a plain client, or one trusting another CA, does not;
  the cluster is told to pass ``mqtt_tls`` to its nodes.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import requests

from cluster_orchestrator.app import ClusterRuntime, ClusterSecurity, build_config
from cluster_orchestrator.mqtt_bus import can_connect
from node_engine.mqtt_link import MqttLink
from treeline_cli.broker import BrokerProcess, mosquitto_binary, start_broker
from treeline_common import topics
from treeline_common.mqtt_acl import CLUSTER_USER, BrokerAuth, TlsFiles

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not mosquitto_binary(), reason="mosquitto is not installed")]

JOIN = "acl-test-join-token-0123456789"
ROOT = "acl-test-root-token-0123456789"
CLUSTER_PW = "cluster-password-for-the-test"
REG = {"profile": "server", "emulated": True, "arch": "x86_64", "cpu_count": 2, "memory_limit_mb": 1024,
       "speed_factor": 1.0, "data_endpoint": "tcp://127.0.0.1:9"}


@dataclass
class Client:
    """A paho client that records what it receives and how its connect was answered."""

    client: mqtt.Client
    got: list[tuple[str, bytes]] = field(default_factory=list)
    answer: list[str] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)

    def topics(self) -> list[str]:
        return [t for t, _ in self.got]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(broker: BrokerProcess, username: str | None, password: str | None = None,
            subscribe: tuple[str, ...] = (), tls: TlsFiles | None = None, timeout: float = 5.0) -> Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"acl-test-{uuid.uuid4().hex[:8]}")
    client.reconnect_delay_set(5, 5)
    if username:
        client.username_pw_set(username, password)
    if tls is not None:
        client.tls_set(ca_certs=tls.ca or None)
    made = Client(client)

    pending: set[int] = set()

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        made.answer.append(str(reason))
        if reason.is_failure:
            return
        pending.update(c.subscribe(topic, qos=1)[1] for topic in subscribe)
        if not pending:
            made.connected.set()

    def on_subscribe(_c: mqtt.Client, _u: Any, mid: int, _codes: Any, _p: Any) -> None:
        pending.discard(mid)  # connected once every SUBACK is back: the test may publish then
        if not pending:
            made.connected.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = lambda _c, _u, msg: made.got.append((msg.topic, bytes(msg.payload)))
    try:
        client.connect(broker.host, broker.port)
    except OSError:
        made.answer.append("connection failed")
        return made
    client.loop_start()
    deadline = time.monotonic() + timeout
    while not made.answer and time.monotonic() < deadline:
        time.sleep(0.02)
    made.connected.wait(1.0)
    return made


def refused(broker: BrokerProcess, username: str | None, password: str | None = None,
            tls: TlsFiles | None = None) -> bool:
    made = connect(broker, username, password, tls=tls, timeout=3.0)
    try:
        return not made.connected.is_set()
    finally:
        made.close()


def publish(client: Client, topic: str, payload: bytes) -> None:
    client.client.publish(topic, payload, qos=1).wait_for_publish(5)


def wait_for(client: Client, topic: str, payload: bytes, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while (topic, payload) not in client.got:
        assert time.monotonic() < deadline, f"{payload!r} on {topic} never arrived: {client.got}"
        time.sleep(0.02)


@dataclass
class Setup:
    broker: BrokerProcess
    runtime: ClusterRuntime
    tls: TlsFiles | None

    @property
    def url(self) -> str:
        return self.runtime.url

    def register(self, name: str, token: str | None = JOIN) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.post(f"{self.url}/api/node/register", json={**REG, "name": name}, headers=headers,
                             timeout=10)

    def node(self, name: str) -> tuple[str, str]:
        answer = self.register(name)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["mqtt_username"] == body["node_id"]
        return body["node_id"], body["mqtt_password"]


@contextmanager
def cluster_with_broker(tmp_path: Path, tls: TlsFiles | None = None) -> Iterator[Setup]:
    """Mosquitto enforcing the files of ``tmp_path/broker``, and a cluster runtime owning them."""
    auth_dir = tmp_path / "broker"
    BrokerAuth(auth_dir).write(CLUSTER_PW)  # what `treeline up` writes before the broker starts
    broker = start_broker("mosquitto", workdir=auth_dir, auth=BrokerAuth(auth_dir), tls=tls)
    config = build_config("acl-cluster", "http://127.0.0.1:9", broker.url, "", telemetry_interval=1.0)
    security = ClusterSecurity(root_token=ROOT, join_tokens=True, join_token=JOIN, mqtt_username=CLUSTER_USER,
                               mqtt_password=CLUSTER_PW, mqtt_auth_dir=auth_dir,
                               mqtt_tls=TlsFiles(ca=tls.ca) if tls else None)
    runtime = ClusterRuntime(config, tmp_path / "cluster", "127.0.0.1", 0, broker.url, security=security)
    try:
        runtime.start()
        assert runtime.bus.wait_connected(10), f"cluster not connected: {broker.log_path.read_text()[-2000:]}"
        yield Setup(broker, runtime, tls)
    finally:
        runtime.stop()
        broker.stop()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with cluster_with_broker(tmp_path_factory.mktemp("acl")) as made:
        yield made


def test_the_broker_config_refuses_anonymous_clients_and_names_the_files(setup: Setup) -> None:
    conf = (setup.broker.workdir / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "password_file" in conf and "acl_file" in conf
    assert refused(setup.broker, None)
    assert refused(setup.broker, CLUSTER_USER, "not-the-password")
    assert refused(setup.broker, "node-unknown", "whatever")
    assert not refused(setup.broker, CLUSTER_USER, CLUSTER_PW)


def test_registration_without_or_with_a_wrong_join_token_is_401(setup: Setup) -> None:
    for token in (None, "wrong-join-token-0123456789"):
        answer = setup.register("intruder", token)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "UNAUTHORIZED"
    names = [n["name"] for n in requests.get(f"{setup.url}/api/nodes", timeout=5).json()["nodes"]]
    assert "intruder" not in names


def test_a_node_publishes_only_under_its_own_prefix(setup: Setup) -> None:
    a_id, a_pw = setup.node("node-a")
    b_id, b_pw = setup.node("node-b")
    cluster = connect(setup.broker, CLUSTER_USER, CLUSTER_PW, subscribe=("nodes/#",))
    node_b = connect(setup.broker, b_id, b_pw, subscribe=(f"nodes/{b_id}/control/#",))
    node_a = connect(setup.broker, a_id, a_pw, subscribe=("nodes/#", "#"))
    try:
        assert cluster.connected.is_set() and node_a.connected.is_set() and node_b.connected.is_set(), (
            cluster.answer, node_a.answer, node_b.answer)
        # Execute: spoofs under B's prefix, and on control topics (a deploy command from a node identity)
        spoofs = [topics.information(b_id), topics.status(b_id), topics.job(b_id),
                  topics.profile_result(b_id), topics.control_deploy(b_id), topics.control_delete(b_id),
                  topics.control_deploy(a_id), "elsewhere/x"]
        for topic in spoofs:
            publish(node_a, topic, b"spoof")
        # then A's own telemetry, and a real command from the cluster to B: both arrive
        publish(node_a, topics.information(a_id), b"mine")
        publish(cluster, topics.control_deploy(b_id), b"real")
        # Barriers, no quiet period: every spoof was acknowledged (so handled by the broker) before
        # "mine" and "real" were published, and the broker delivers to one subscriber in order, so a
        # spoof it let through would have reached the cluster before "mine" and B before "real".
        wait_for(cluster, topics.information(a_id), b"mine")
        wait_for(node_b, topics.control_deploy(b_id), b"real")

        # Assert: no spoof reached anybody; A saw nothing of B (not even the real command)
        assert [t for t, p in cluster.got if p == b"spoof"] == []
        assert node_b.got == [(topics.control_deploy(b_id), b"real")]
        assert [t for t in node_a.topics() if b_id in t] == []
    finally:
        for client in (cluster, node_a, node_b):
            client.close()


def test_a_reregistered_node_gets_a_new_password_and_the_old_one_is_refused(setup: Setup) -> None:
    node_id, first = setup.node("node-c")
    again_id, second = setup.node("node-c")
    assert again_id == node_id and second != first
    assert refused(setup.broker, node_id, first)
    assert not refused(setup.broker, node_id, second)


def test_a_node_link_with_its_credentials_is_born_and_heard_by_the_cluster(setup: Setup) -> None:
    node_id, password = setup.node("node-d")
    link = MqttLink(f"treeline-node-{node_id}", setup.broker.host, setup.broker.port,
                    username=node_id, password=password)
    heard: list[bytes] = []
    link.subscribe(topics.status(node_id), heard.append)  # its own status: readable (rebirth check)
    link.start()
    try:
        assert link.connected.wait(10)
        # its subscription may still be on the way: publish until it hears itself, within a deadline
        deadline = time.monotonic() + 5
        while not heard and time.monotonic() < deadline:
            assert link.publish_and_wait(topics.status(node_id), b"{}", retain=False)
            deadline_one = time.monotonic() + 0.2
            while not heard and time.monotonic() < deadline_one:
                time.sleep(0.02)
        assert heard and set(heard) == {b"{}"}
    finally:
        link.stop()


# ---------------------------------------------------------------- TLS


def make_certificates(directory: Path) -> tuple[TlsFiles, TlsFiles]:
    """(the broker's CA/cert/key, another CA) made with the openssl CLI; the cert names 127.0.0.1."""
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    for ca in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN=treeline-test-{ca}",
            "-keyout", f"{ca}.key", "-out", f"{ca}.crt")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "broker.key",
        "-out", "broker.csr")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "broker.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-extfile", "san.ext", "-out", "broker.crt")
    broker = TlsFiles(ca=str(directory / "ca.crt"), cert=str(directory / "broker.crt"),
                      key=str(directory / "broker.key"))
    return broker, TlsFiles(ca=str(directory / "other-ca.crt"))


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl is not installed")
def test_mqtt_over_tls_with_certificates_made_now(tmp_path: Path) -> None:
    broker_tls, other = make_certificates(tmp_path / "certs")
    client_tls = TlsFiles(ca=broker_tls.ca)
    with cluster_with_broker(tmp_path, tls=broker_tls) as made:
        # the cluster itself connected over TLS (the fixture waited for it) and tells its nodes
        node_id, password = made.node("tls-node")
        answer = made.register("tls-node").json()
        assert answer["mqtt_tls"] is True
        password = answer["mqtt_password"]
        host, port = made.broker.host, made.broker.port
        assert can_connect(host, port, node_id, password, timeout=5, tls=client_tls)
        assert not can_connect(host, port, node_id, password, timeout=3)  # plain MQTT on a TLS listener
        assert not can_connect(host, port, node_id, password, timeout=3, tls=other)  # not our CA
        assert not can_connect(host, port, node_id, "wrong", timeout=3, tls=client_tls)

        link = MqttLink(f"treeline-node-{node_id}", host, port, username=node_id, password=password,
                        tls=client_tls)
        link.start()
        try:
            assert link.connected.wait(10)
        finally:
            link.stop()
