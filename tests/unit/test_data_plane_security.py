"""Data-plane security over real zmq sockets on loopback: who may send to a stage, and CURVE.

Commands come from the cluster's own ``planning.deploy_commands`` (keys derived there from a
cluster secret), so the tests cover the keys' whole way: planning -> DeployCommand ->
StageAccess -> the server's admission check and the signed forward. Sessions are tiny
Python stand-ins that double their input and count runs, so a refused request is seen not to
have been computed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import zmq
from treeline_test_helpers import start_data_plane_server as _server

from cluster_orchestrator import keys, planning
from cluster_orchestrator.keys import DataPlaneSecurity, EncryptionUnavailable, NodeCurve
from node_engine.commands import CommandHandler
from node_engine.data_plane.client import DataPlaneError, TensorClient, new_request_id
from node_engine.data_plane.security import StageAccess
from node_engine.data_plane.server import DataPlaneServer
from node_engine.data_plane.service_client import InferenceError, RetryPolicy, ServiceClient
from node_engine.stages import LoadedStage, StageTable, relay_stage
from treeline_common.clock import FakeClock
from treeline_common.jobs import Entry, Placement, StagePlacement
from treeline_common.messages import DeployCommand, NextStage, decode, encode, stage_key
from treeline_common.tensor_wire import (
    UNAUTHORIZED,
    TensorHeader,
    frames_digest,
    pack,
    signed_by,
    unpack,
)

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
DEADLINE = 5.0
X = np.arange(6, dtype=np.float32).reshape(2, 3)


class Doubling:
    """Doubles every input; counts runs."""

    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.runs = 0
        self.lock = threading.Lock()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            self.runs += 1
        return {name: np.asarray(value) * 2 for name, value in inputs.items()}

    def close(self) -> None:
        pass


def _loaded(cmd: DeployCommand, session: Doubling) -> LoadedStage:
    """What the node's command handler makes of a deploy command (node_engine.commands)."""
    if cmd.relay:
        return relay_stage(cmd)
    return LoadedStage(stage_key(cmd.deployment_id, cmd.stage, cmd.generation), cmd.deployment_id, cmd.stage,
                       cmd.sha256, cmd.generation, session, cmd.next, outputs=tuple(cmd.outputs),
                       access=StageAccess.from_command(cmd))


def _placement(deployment: str, endpoints: list[str], generation: int = 1, relay: str = "") -> Placement:
    """Stage i at ``endpoints[i]`` (node id "n<i>"), optionally a relay entry at ``relay`` (node "r")."""
    stages = tuple(StagePlacement(index=i, node_id=f"n{i}", node_name=f"node-{i}", endpoint=endpoint,
                                  stage_key=stage_key(deployment, i, generation), inputs=("x",),
                                  outputs=("x",), sha256=f"{i:064x}")
                   for i, endpoint in enumerate(endpoints))
    relay_stage = None
    if relay:
        relay_stage = StagePlacement(index=planning.RELAY_STAGE, node_id="r", endpoint=relay,
                                     stage_key=stage_key(deployment, planning.RELAY_STAGE, generation),
                                     inputs=("x",), outputs=("x",))
    first = relay_stage or stages[0]
    return Placement(deployment_id=deployment, generation=generation, stages=stages, relay=relay_stage,
                     entry=Entry(first.node_id, first.endpoint, first.stage_key))


def _endpoints(nodes: list[DataPlaneServer]) -> list[str]:
    return [node.endpoint for node in nodes]


def _deploy(placement: Placement, tables: Mapping[str, StageTable], security: DataPlaneSecurity,
            sessions: dict[str, Doubling] | None = None) -> list[DeployCommand]:
    """Apply the planned commands to the nodes' tables, through the MQTT encoding."""
    commands = []
    for node_id, command in planning.deploy_commands(placement, "http://root", security):
        command = decode(DeployCommand, encode(command))  # what the node really receives
        session = Doubling()
        if sessions is not None:
            sessions[stage_key(command.deployment_id, command.stage, command.generation)] = session
        tables[node_id].put(_loaded(command, session))
        commands.append(command)
    return commands


def _raw_request(endpoint: str, frames: list[Any], curve_server_key: str = "",
                 timeout: float = DEADLINE) -> tuple[TensorHeader, dict[str, np.ndarray]] | None:
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if curve_server_key:
            public, secret = zmq.curve_keypair()
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = \
                curve_server_key.encode(), public, secret
        sock.connect(endpoint)
        sock.send_multipart(frames)
        if not sock.poll(int(timeout * 1000)):
            return None
        return unpack(sock.recv_multipart())
    finally:
        ctx.destroy(linger=0)


# ---------------------------------------------------------------- the authenticator (pure)


def test_authenticator_covers_id_stage_specs_timings_and_bytes() -> None:
    key = bytes(32)
    frames = pack("request", "r1", {"x": X}, stage="d/1/1", timings={"d/1/0": 1.25}, key=key)
    header, _ = unpack([bytes(frames[0]), X.tobytes()])
    assert signed_by(header, [X.tobytes()], [key])
    assert not signed_by(header, [X.tobytes()], [bytes([1]) * 32])  # another deployment's key
    assert not signed_by(header, [X.tobytes()], [])
    tampered = bytearray(X.tobytes())
    tampered[0] ^= 1
    assert not signed_by(header, [bytes(tampered)], [key])
    for change in ({"request_id": "r2"}, {"stage": "d/1/2"}, {"timings": {"d/1/0": 9.0}},
                   {"tensors": [{"name": "x", "dtype": "<f4", "shape": [3, 2]}]}):
        forged = TensorHeader(**{**header.__dict__, **change})
        assert not signed_by(forged, [X.tobytes()], [key]), change
    unsigned, _ = unpack(pack("request", "r1", {"x": X}, stage="d/1/1"))
    assert unsigned.auth == "" and not signed_by(unsigned, [X.tobytes()], [key])
    # frames are length-prefixed: moving bytes from one tensor to the next changes the digest
    assert frames_digest([b"ab", b"c"]) != frames_digest([b"a", b"bc"])


@pytest.mark.parametrize(("access", "signed_with", "over_curve", "admitted"), [
    (StageAccess(), None, False, True),  # no data key: open, as before authentication
    (StageAccess(b"k" * 32), None, False, False),  # inner stage: unsigned refused
    (StageAccess(b"k" * 32), b"k" * 32, False, True),
    (StageAccess(b"k" * 32), b"o" * 32, False, False),  # another deployment's key
    (StageAccess(b"k" * 32, entry=True), None, False, True),  # open entry: callers need no key
    (StageAccess(b"k" * 32, entry=True), b"o" * 32, False, False),  # but a wrong signature is refused
    (StageAccess(b"k" * 32, b"c" * 32, entry=True), None, False, False),  # privacy: callers must sign
    (StageAccess(b"k" * 32, b"c" * 32, entry=True), b"c" * 32, False, True),
    (StageAccess(b"k" * 32, b"c" * 32, entry=False), b"c" * 32, False, False),  # caller key: entry only
    (StageAccess(b"k" * 32, encrypted=True), b"k" * 32, False, False),  # inner, encrypted: CURVE only
    (StageAccess(b"k" * 32, encrypted=True), b"k" * 32, True, True),
    (StageAccess(b"k" * 32, entry=True, encrypted=True), None, False, True),  # callers may use plain TCP
])
def test_stage_access_rule(access: StageAccess, signed_with: bytes | None, over_curve: bool,
                           admitted: bool) -> None:
    frames = pack("request", "r", {"x": X}, stage="d/1/1", key=signed_with or b"")
    header, _ = unpack(frames)
    assert (access.refusal(header, frames[1:], over_curve) == "") is admitted


# ---------------------------------------------------------------- the cluster's keys


def test_keys_derive_per_deployment_generation_and_never_reach_the_root() -> None:
    one = planning.data_key(SECRET, "svc-0", 1)
    assert len(one) == 64 and one == planning.data_key(SECRET, "svc-0", 1)  # re-sent commands match
    assert len({one, planning.data_key(SECRET, "svc-0", 2), planning.data_key(SECRET, "svc-1", 1),
                planning.data_key(OTHER_SECRET, "svc-0", 1)}) == 4
    assert planning.caller_key(SECRET, "svc-0") not in (one, planning.caller_key(SECRET, "svc-1"))
    assert len(keys.new_cluster_secret()) == 32
    assert keys.new_cluster_secret() != keys.new_cluster_secret()
    placement = _placement("svc-0", ["tcp://a:1", "tcp://b:2"])
    security = DataPlaneSecurity(SECRET, authenticate_callers=True)
    commands = planning.deploy_commands(placement, "http://root", security)
    assert {c.data_key for _, c in commands} == {one}
    assert [(c.entry, bool(c.caller_key)) for _, c in commands] == [(True, True), (False, False)]
    assert one not in repr(commands) and planning.caller_key(SECRET, "svc-0") not in repr(commands)
    pushed = json.dumps(placement.to_dict())  # what the cluster reports to the root
    assert one not in pushed and "data_key" not in pushed
    # no secret: the commands are what they were before authentication existed
    plain = planning.deploy_commands(placement, "http://root")
    for _, command in plain:
        assert (command.data_key, command.entry, command.caller_key) == ("", False, "")
        assert not command.encrypt_tensors
        assert command.next is None or command.next.curve_server_key == ""


def test_encryption_needs_every_receiving_node_to_report_a_curve_key() -> None:
    placement = _placement("svc-0", ["tcp://a:1", "tcp://b:2"])
    curve = {"n1": NodeCurve("tcp://b:3", "B" * 40)}
    security = DataPlaneSecurity(SECRET, encrypt_tensors=True, curve=curve)
    commands = planning.deploy_commands(placement, "http://root", security)
    assert commands[0][1].next == NextStage("n1", "tcp://b:3", "svc-0/1/1", curve_server_key="B" * 40)
    assert all(c.encrypt_tensors for _, c in commands)
    with pytest.raises(EncryptionUnavailable, match="node-1 reports no CURVE key"):
        planning.deploy_commands(placement, "http://root", DataPlaneSecurity(SECRET, encrypt_tensors=True))
    docs: list[dict[str, Any]] = [
        {"node_id": "n1", "telemetry": {"data_curve_endpoint": "tcp://b:3", "curve_public_key": "B" * 40}},
        {"node_id": "n2", "data_curve_endpoint": "tcp://c:3"},  # no key: not a CURVE node
    ]
    assert keys.node_curve_keys(docs) == curve


# ---------------------------------------------------------------- authenticated pipelines


def test_signed_pipeline_works_end_to_end_with_an_open_entry(servers: list[DataPlaneServer]) -> None:
    tables = {name: StageTable() for name in ("n0", "n1", "n2")}
    nodes = [_server(servers, tables[name], name) for name in tables]
    sessions: dict[str, Doubling] = {}
    commands = _deploy(_placement("svc-0", _endpoints(nodes)), tables, DataPlaneSecurity(SECRET), sessions)
    assert all(c.data_key for c in commands)
    with TensorClient(nodes[0].endpoint) as client:  # no privacy asked: callers need no key
        outputs, timings = client.infer("svc-0/1/0", {"x": X})
        results = client.infer_many("svc-0/1/0", [{"x": X + i} for i in range(10)], max_in_flight=4)
    np.testing.assert_array_equal(outputs["x"], X * 8)
    assert set(timings) == {"svc-0/1/0", "svc-0/1/1", "svc-0/1/2"}
    assert [r[0]["x"][0, 0] for r in results] == [8.0 * i for i in range(10)]
    assert [sessions[f"svc-0/1/{i}"].runs for i in range(3)] == [11, 11, 11]


def test_unsigned_and_forged_requests_to_an_inner_stage_are_refused(servers: list[DataPlaneServer]) -> None:
    tables = {"n0": StageTable(), "n1": StageTable()}
    nodes = [_server(servers, tables[name], name) for name in tables]
    sessions: dict[str, Doubling] = {}
    _deploy(_placement("svc-0", _endpoints(nodes)), tables, DataPlaneSecurity(SECRET), sessions)
    inner = "svc-0/1/1"
    not_signed = "not signed: only stages of the same deployment"
    with TensorClient(nodes[1].endpoint) as client, \
            pytest.raises(DataPlaneError, match=not_signed) as unsigned:
        client.infer(inner, {"x": X})
    assert unsigned.value.code == UNAUTHORIZED
    with TensorClient(nodes[1].endpoint, key="ab" * 32) as client, \
            pytest.raises(DataPlaneError, match="authenticator does not verify") as forged:  # a guessed key
        client.infer(inner, {"x": X})
    assert forged.value.code == UNAUTHORIZED
    # a genuine signature over other bytes: the tensor was changed after signing
    good_key = bytes.fromhex(planning.data_key(SECRET, "svc-0", 1))
    frames = pack("request", new_request_id(), {"x": X}, stage=inner, key=good_key)
    answer = _raw_request(nodes[1].endpoint, [bytes(frames[0]), (X + 1).tobytes()])
    assert answer is not None and answer[0].code == UNAUTHORIZED
    assert sessions[inner].runs == 0
    # the stage still serves what its own deployment signs
    with TensorClient(nodes[1].endpoint, key=good_key.hex()) as client:
        outputs, _ = client.infer(inner, {"x": X})
    np.testing.assert_array_equal(outputs["x"], X * 2)
    assert sessions[inner].runs == 1


def test_refused_request_cannot_read_a_stored_reply(servers: list[DataPlaneServer]) -> None:
    tables = {"n0": StageTable(), "n1": StageTable()}
    nodes = [_server(servers, tables[name], name) for name in tables]
    _deploy(_placement("svc-0", _endpoints(nodes)), tables, DataPlaneSecurity(SECRET))
    key = planning.data_key(SECRET, "svc-0", 1)
    rid = new_request_id()
    with TensorClient(nodes[1].endpoint, key=key) as client:
        client.infer("svc-0/1/1", {"x": X}, request_id=rid)
    with TensorClient(nodes[1].endpoint) as client, pytest.raises(DataPlaneError) as refused:
        client.infer("svc-0/1/1", {"x": X}, request_id=rid)  # same id, unsigned: no stored reply
    assert refused.value.code == UNAUTHORIZED


def test_a_stage_of_another_deployment_cannot_send_to_a_stage(servers: list[DataPlaneServer]) -> None:
    tables = {"n0": StageTable(), "n1": StageTable()}
    nodes = [_server(servers, tables[name], name) for name in tables]
    sessions: dict[str, Doubling] = {}
    _deploy(_placement("victim-0", _endpoints(nodes)), tables, DataPlaneSecurity(SECRET), sessions)
    # another deployment's stage (its own valid key, from the same cluster) routed at the victim's
    # inner stage, as a compromised or misrouted stage would be
    attacker = planning.deploy_commands(_placement("other-0", _endpoints(nodes[:1])), "http://root",
                                        DataPlaneSecurity(SECRET))[0][1]
    victim = NextStage("n1", nodes[1].endpoint, "victim-0/1/1")
    attacker = DeployCommand(**{**attacker.__dict__, "next": victim})
    tables["n0"].put(_loaded(attacker, Doubling()))
    # and a stage of the victim's own deployment, but another generation
    old = planning.deploy_commands(_placement("victim-0", _endpoints(nodes[:1]), generation=0), "http://root",
                                   DataPlaneSecurity(SECRET))[0][1]
    old = DeployCommand(**{**old.__dict__, "next": victim})
    tables["n0"].put(_loaded(old, Doubling()))
    with TensorClient(nodes[0].endpoint) as client:
        for entry in ("other-0/1/0", "victim-0/0/0"):
            with pytest.raises(DataPlaneError, match="authenticator does not verify") as refused:
                client.infer(entry, {"x": X})
            assert refused.value.code == UNAUTHORIZED
        outputs, _ = client.infer("victim-0/1/0", {"x": X})  # the victim's own pipeline still works
    np.testing.assert_array_equal(outputs["x"], X * 4)
    assert sessions["victim-0/1/1"].runs == 1


def test_privacy_entry_takes_only_requests_signed_with_the_caller_key(servers: list[DataPlaneServer]) -> None:
    tables = {"r": StageTable(), "n0": StageTable(), "n1": StageTable()}
    relay = _server(servers, tables["r"], "r")
    nodes = [_server(servers, tables[name], name) for name in ("n0", "n1")]
    caller_key = "c0" * 32
    _deploy(_placement("svc-0", _endpoints(nodes), relay=relay.endpoint), tables,
            DataPlaneSecurity(SECRET, authenticate_callers=True, caller_key=caller_key))
    entry = "svc-0/1/-1"
    with TensorClient(relay.endpoint) as client, pytest.raises(DataPlaneError) as refused:
        client.infer(entry, {"x": X})
    assert refused.value.code == UNAUTHORIZED and "caller key" in str(refused.value)
    policy = RetryPolicy(deadline=DEADLINE, attempt_timeout=2.0)
    # the resolver names the key (as service_resolver does from the owner's service document)
    with ServiceClient(lambda: (relay.endpoint, entry, caller_key), policy=policy) as client:
        outputs, timings = client.infer({"x": X})
    np.testing.assert_array_equal(outputs["x"], X * 4)
    assert set(timings) == {entry, "svc-0/1/0", "svc-0/1/1"}
    # a fixed key given to the client works too; a wrong one ends at once (not retried)
    with ServiceClient(lambda: (relay.endpoint, entry), policy=policy, key=caller_key) as client:
        assert client.infer({"x": X})[0]["x"][0, 1] == 4.0
    with ServiceClient(lambda: (relay.endpoint, entry), policy=policy, key="11" * 32) as client, \
            pytest.raises(InferenceError, match="does not verify") as wrong:
        client.infer({"x": X})
    assert wrong.value.attempts == 1 and wrong.value.code == UNAUTHORIZED


# ---------------------------------------------------------------- CURVE


def _curve_server(servers: list[DataPlaneServer], table: StageTable, name: str) -> DataPlaneServer:
    return _server(servers, table, name, curve_secret_key=zmq.curve_keypair()[1])


def _curve_of(nodes: Mapping[str, DataPlaneServer]) -> dict[str, NodeCurve]:
    return {node_id: NodeCurve(s.curve_endpoint, s.curve_public_key) for node_id, s in nodes.items()}


def test_curve_pipeline_works_and_inner_stages_refuse_plain_tcp(servers: list[DataPlaneServer]) -> None:
    tables = {name: StageTable() for name in ("r", "n0", "n1")}
    by_id = {name: _curve_server(servers, tables[name], name) for name in tables}
    nodes = [by_id["n0"], by_id["n1"]]
    for server in by_id.values():
        assert server.curve_endpoint not in ("", server.endpoint) and len(server.curve_public_key) == 40
    sessions: dict[str, Doubling] = {}
    commands = _deploy(_placement("svc-0", _endpoints(nodes), relay=by_id["r"].endpoint), tables,
                       DataPlaneSecurity(SECRET, encrypt_tensors=True, curve=_curve_of(by_id)), sessions)
    routes = [c.next.endpoint for c in commands if c.next]
    assert routes == [by_id["n0"].curve_endpoint, by_id["n1"].curve_endpoint]
    with TensorClient(by_id["r"].endpoint) as client:  # callers may reach the entry over plain TCP
        outputs, timings = client.infer("svc-0/1/-1", {"x": X})
    np.testing.assert_array_equal(outputs["x"], X * 4)
    assert set(timings) == {"svc-0/1/-1", "svc-0/1/0", "svc-0/1/1"}
    with TensorClient(by_id["r"].curve_endpoint, curve_server_key=by_id["r"].curve_public_key) as client:
        outputs, _ = client.infer("svc-0/1/-1", {"x": X})  # or over CURVE, knowing its key
    np.testing.assert_array_equal(outputs["x"], X * 4)
    # an inner stage refuses even a correctly signed request that arrives in plain text
    key = planning.data_key(SECRET, "svc-0", 1)
    with TensorClient(by_id["n1"].endpoint, key=key) as client, pytest.raises(DataPlaneError) as plain:
        client.infer("svc-0/1/1", {"x": X})
    assert plain.value.code == UNAUTHORIZED and "encrypted requests only" in str(plain.value)
    assert sessions["svc-0/1/1"].runs == 2


def test_plaintext_or_wrong_key_client_cannot_talk_to_a_curve_socket(servers: list[DataPlaneServer]) -> None:
    table = StageTable()
    session = Doubling()
    table.put(LoadedStage("d/1/0", "d", 0, "x", 1, session, None))  # open stage: only the transport matters
    node = _curve_server(servers, table, "c")
    frames = pack("request", new_request_id(), {"x": X}, stage="d/1/0")
    assert _raw_request(node.curve_endpoint, frames, timeout=0.5) is None  # no CURVE: handshake fails
    other_public = zmq.curve_keypair()[0].decode()
    assert _raw_request(node.curve_endpoint, frames, curve_server_key=other_public, timeout=0.5) is None
    with TensorClient(node.curve_endpoint) as client, pytest.raises(TimeoutError):
        client.infer("d/1/0", {"x": X}, timeout=0.5)
    assert session.runs == 0
    answer = _raw_request(node.curve_endpoint, frames, curve_server_key=node.curve_public_key)
    assert answer is not None and answer[0].kind == "reply" and session.runs == 1


def test_forward_to_a_curve_node_with_a_wrong_key_fails_fast_as_unreachable(
        servers: list[DataPlaneServer]) -> None:
    tables = {"n0": StageTable(), "n1": StageTable()}
    nodes = {name: _curve_server(servers, tables[name], name) for name in tables}
    curve = _curve_of(nodes)
    curve["n1"] = NodeCurve(nodes["n1"].curve_endpoint, zmq.curve_keypair()[0].decode())  # stale key
    _deploy(_placement("svc-0", _endpoints(list(nodes.values()))), tables,
            DataPlaneSecurity(SECRET, encrypt_tensors=True, curve=curve))
    with TensorClient(nodes["n0"].endpoint) as client, pytest.raises(DataPlaneError) as failed:
        client.infer("svc-0/1/0", {"x": X}, timeout=DEADLINE)
    assert failed.value.code == "unreachable"


def test_node_applies_keys_from_commands_and_a_redeploy_updates_them(tmp_path: Any) -> None:
    """The command handler gives a stage its access rule; a repeated deploy (same artifact)
    that carries new keys replaces the rule along with the route."""
    table = StageTable()
    handler = CommandHandler("n", table, tmp_path, lambda path: Doubling(), lambda state: None, FakeClock(),
                             threading.Event())
    relay = DeployCommand("svc-0", -1, "", "", ["x"], ["x"], NextStage("n0", "tcp://a:1", "svc-0/1/0"),
                          generation=1, relay=True)
    handler.deploy(relay)
    assert table.get("svc-0/1/-1").access == StageAccess()  # type: ignore[union-attr]
    keyed = DeployCommand(**{**relay.__dict__, "data_key": "aa" * 32, "entry": True, "caller_key": "bb" * 32})
    handler.deploy(keyed)
    assert table.get("svc-0/1/-1").access == StageAccess(bytes([0xAA]) * 32, bytes([0xBB]) * 32,  # type: ignore[union-attr]
                                                         entry=True)
    assert "aa" * 32 not in repr(keyed) and "bb" * 32 not in repr(keyed)
