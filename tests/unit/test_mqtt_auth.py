"""MQTT identities without a broker: the password file format, the ACL text, and the cluster's
per-node credentials (issued, replaced on re-registration, kept as hashes, written to the file,
a reload signalled to the broker's pid)."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cluster_orchestrator.mqtt_auth import CREDENTIALS_KEY, MqttCredentials
from cluster_orchestrator.store import InMemoryClusterStateStore
from treeline_common.mqtt_acl import (
    CLUSTER_USER,
    BrokerAuth,
    acl_text,
    check_username,
    hash_password,
    password_file_text,
    verify_password,
)


def test_hash_is_mosquittos_pbkdf2_sha512_format_and_verifies() -> None:
    hashed = hash_password("s3cret")
    _, kind, iterations, salt, digest = hashed.split("$")
    assert (kind, iterations) == ("7", "101") and len(salt) == 16 and len(digest) == 88
    assert verify_password("s3cret", hashed)
    assert not verify_password("s3cret ", hashed)
    assert hash_password("s3cret") != hashed  # a fresh salt each time
    assert not verify_password("x", "$6$not$ours") and not verify_password("x", "garbage")


@pytest.mark.skipif(not shutil.which("mosquitto_passwd"), reason="mosquitto_passwd not installed")
def test_a_hash_written_by_mosquitto_passwd_verifies(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "alice", "wonderland"], check=True,
                   capture_output=True)
    user, hashed = path.read_text().strip().split(":", 1)
    assert user == "alice" and verify_password("wonderland", hashed)
    assert not verify_password("Wonderland", hashed)


def test_acl_gives_the_cluster_everything_and_each_node_its_own_prefix() -> None:
    lines = acl_text("the-cluster").splitlines()
    assert lines[1:3] == ["user the-cluster", "topic readwrite nodes/#"]
    patterns = [line for line in lines if line.startswith("pattern")]
    assert patterns == ["pattern write nodes/%u/status", "pattern write nodes/%u/information",
                        "pattern write nodes/%u/job", "pattern write nodes/%u/jobs/resources",
                        "pattern write nodes/%u/profile", "pattern write nodes/%u/training",
                        "pattern read nodes/%u/status",
                        "pattern read nodes/%u/control/#"]
    assert not any("control" in line and "write" in line for line in lines)


@pytest.mark.parametrize("name", ["", "a/b", "a+b", "a#", "a:b", "a b"])
def test_usernames_unusable_in_patterns_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        check_username(name)
    with pytest.raises(ValueError):
        password_file_text({name: "$7$1$a$b"})


def test_broker_auth_files_are_private(tmp_path: Path) -> None:
    auth = BrokerAuth(tmp_path / "broker")
    auth.write("pw", {"node-1": hash_password("n1")})
    for path in (auth.password_file, auth.acl_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    users = dict(line.split(":", 1) for line in auth.password_file.read_text().splitlines())
    assert set(users) == {CLUSTER_USER, "node-1"}
    assert verify_password("pw", users[CLUSTER_USER]) and verify_password("n1", users["node-1"])


class Probe:
    def __init__(self, answers: list[bool]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str]] = []

    def __call__(self, username: str, password: str, timeout: float) -> bool:
        self.calls.append((username, password))
        return self.answers.pop(0) if self.answers else True


def _file_users(creds: MqttCredentials) -> dict[str, str]:
    return dict(line.split(":", 1) for line in creds.auth.password_file.read_text().splitlines())


def test_each_registration_gets_a_new_password_kept_only_as_a_hash(tmp_path: Path) -> None:
    store = InMemoryClusterStateStore()
    probe = Probe([False, True])
    creds = MqttCredentials(store, tmp_path, "cluster-u", "cluster-pw", probe=probe)
    creds.start()
    assert set(_file_users(creds)) == {"cluster-u"}

    first = creds.issue("node-a")
    assert first["mqtt_username"] == "node-a" and len(first["mqtt_password"]) >= 24
    assert probe.calls == [("node-a", first["mqtt_password"])] * 2  # waited until the broker took it
    again = creds.issue("node-a")  # a new life of the node: a new password, the old one is dead
    assert again["mqtt_password"] != first["mqtt_password"]
    assert creds.verify("node-a", again["mqtt_password"])
    assert not creds.verify("node-a", first["mqtt_password"])
    assert creds.verify("cluster-u", "cluster-pw") and not creds.verify("nobody", "x")

    stored: Any = store.get_setting(CREDENTIALS_KEY)
    assert set(stored) == {"node-a"} and again["mqtt_password"] not in str(stored)
    assert verify_password(again["mqtt_password"], _file_users(creds)["node-a"])


def test_a_restarted_cluster_writes_every_stored_node_back(tmp_path: Path) -> None:
    store = InMemoryClusterStateStore()
    first = MqttCredentials(store, tmp_path, CLUSTER_USER, "pw1")
    issued = first.issue("node-a")
    (tmp_path / "passwd").unlink()
    second = MqttCredentials(store, tmp_path, CLUSTER_USER, "pw2")  # a new process, a new own password
    second.start()
    users = _file_users(second)
    assert verify_password(issued["mqtt_password"], users["node-a"])
    assert verify_password("pw2", users[CLUSTER_USER])


def test_the_broker_named_by_the_pid_file_gets_sighup(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "broker.pid").write_text(f"{sleeper.pid}\n")
        MqttCredentials(InMemoryClusterStateStore(), tmp_path, CLUSTER_USER, "pw").issue("node-a")
        assert sleeper.wait(5) == -signal.SIGHUP  # sleep dies of it: the signal was sent
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def test_no_pid_file_or_a_dead_pid_is_a_warning_not_an_error(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    creds = MqttCredentials(InMemoryClusterStateStore(), tmp_path, CLUSTER_USER, "pw")
    creds.issue("node-a")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "broker.pid").write_text(str(dead.pid))
    creds.issue("node-b")
    assert set(_file_users(creds)) == {CLUSTER_USER, "node-a", "node-b"}
    assert sum("reads the new credentials at its next start" in r.getMessage() for r in caplog.records) == 2
    assert os.path.exists(tmp_path / "acl")
