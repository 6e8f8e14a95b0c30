"""MQTT identities and the access rules of the broker, shared by ``treeline up`` and the cluster.

Who may do what on the broker (Mosquitto's ``password_file`` / ``acl_file``, see
docs/contracts.md "MQTT identity and ACL"):

- the **cluster** user (:data:`CLUSTER_USER` by default) reads and writes everything under
  ``nodes/#``: it alone publishes the control topics;
- a **node** connects as its node id (the username the cluster hands out at registration, with a
  random password per node) and may publish only ``nodes/<its id>/status|information|job|
  jobs/resources|profile`` and read only ``nodes/<its id>/control/#`` and its own ``status`` (for
  the rebirth check). The rules are Mosquitto ``pattern`` lines on ``%u`` (the authenticated
  username), so the ACL file never changes when nodes join: only the password file does;
- nobody else connects (``allow_anonymous false``).

The password file uses Mosquitto 2's format, ``user:$7$<iterations>$<salt b64>$<PBKDF2-SHA512
b64>``, written here with :mod:`hashlib` (``mosquitto_passwd`` need not be installed). Files are
replaced atomically (write, then rename) with mode 0600, so a broker reloading on SIGHUP reads
either the old or the new file, never half of one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from treeline_common import topics

CLUSTER_USER = "treeline-cluster"
PASSWORD_FILE = "passwd"  # in the broker's auth dir (``--mqtt-auth-dir``)
ACL_FILE = "acl"
PID_FILE = "broker.pid"  # the running broker's pid, rewritten by each (re)start of the broker
PASSWORD_ENV = "TREELINE_MQTT_PASSWORD"  # the cluster's own MQTT password (never on a command line)

_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes
_SALT_BYTES = 12
# node -> cluster topics a node may publish under its own id (treeline_common.topics)
NODE_PUBLISHES = ("status", "information", "job", "jobs/resources", "profile", "training")


def new_password() -> str:
    """A random MQTT password (32 URL-safe characters)."""
    return secrets.token_urlsafe(24)


def hash_password(password: str, salt: bytes | None = None, iterations: int = _ITERATIONS) -> str:
    """Mosquitto's ``$7$`` hash of ``password`` (PBKDF2-HMAC-SHA512, 64 bytes)."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash made by :func:`hash_password` or mosquitto_passwd."""
    try:
        _, kind, iterations, salt_b64, digest_b64 = hashed.split("$")
        if kind != "7":
            return False
        salt = base64.b64decode(salt_b64)
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(iterations), 64)
        return hmac.compare_digest(base64.b64encode(got).decode(), digest_b64)
    except (ValueError, TypeError):  # binascii.Error is a ValueError
        return False


def check_username(name: str) -> str:
    """``name`` if Mosquitto can use it in a ``%u`` pattern (no ``/ + # :``, no spaces), else ValueError."""
    if not name or any(c in name for c in "/+#: \t\n") or len(name) > 128:
        raise ValueError(f"unusable MQTT username {name!r}")
    return name


def password_file_text(hashes: Mapping[str, str]) -> str:
    """The password file for ``{username: $7$ hash}`` (sorted: the same users give the same file)."""
    return "".join(f"{check_username(user)}:{hashed}\n" for user, hashed in sorted(hashes.items()))


def acl_text(cluster_user: str = CLUSTER_USER) -> str:
    """The ACL file: the cluster user everything under ``nodes/#``, every other user its own prefix."""
    own = f"{topics.PREFIX}/%u"
    lines = ["# Treeline MQTT ACL (treeline_common.mqtt_acl): written by `treeline up`, do not edit",
             f"user {check_username(cluster_user)}", f"topic readwrite {topics.PREFIX}/#", "",
             "# every node authenticates as its node id: its own topics only"]
    lines += [f"pattern write {own}/{suffix}" for suffix in NODE_PUBLISHES]
    lines += [f"pattern read {own}/status", f"pattern read {own}/control/#"]
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, readable by this user only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class BrokerAuth:
    """What a broker needs to enforce identities: its auth dir (password file, ACL file, pid file)."""

    auth_dir: Path
    cluster_user: str = CLUSTER_USER

    @property
    def password_file(self) -> Path:
        return self.auth_dir / PASSWORD_FILE

    @property
    def acl_file(self) -> Path:
        return self.auth_dir / ACL_FILE

    @property
    def pid_file(self) -> Path:
        return self.auth_dir / PID_FILE

    def write(self, cluster_password: str, others: Mapping[str, str] | None = None) -> None:
        """Write the ACL and a password file holding the cluster user (and ``others``' hashes)."""
        write_private(self.acl_file, acl_text(self.cluster_user))
        write_private(self.password_file, password_file_text(
            {**(others or {}), self.cluster_user: hash_password(cluster_password)}))


@dataclass(frozen=True)
class TlsFiles:
    """TLS for MQTT: ``ca`` verifies the other side; ``cert``/``key`` are this side's own (the
    broker's, or a client's for mutual TLS); empty paths are left out."""

    ca: str = ""
    cert: str = ""
    key: str = ""
