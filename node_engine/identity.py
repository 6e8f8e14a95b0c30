"""The node's long-lived data-plane identity: its CURVE keypair, kept in its data directory.

Why persistent: other nodes forward encrypted tensors to this node with the public key the
cluster handed them in their deploy commands; a node that made a new keypair at every start
would leave them holding a stale key after a restart (their forwards would fail as
``unreachable`` until the cluster re-sends commands). The secret key is written once, mode
0600, as Z85 text (``curve_secret.key``); a node without a data directory gets a fresh one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import zmq

log = logging.getLogger(__name__)

SECRET_FILE = "curve_secret.key"


def curve_secret_key(data_dir: Path) -> bytes:
    """The node's CURVE secret key (Z85 bytes), created in ``data_dir`` on first use."""
    path = data_dir / SECRET_FILE
    try:
        secret = path.read_bytes().strip()
        zmq.curve_public(secret)  # raises on a damaged file
        return secret
    except FileNotFoundError:
        pass
    except (ValueError, zmq.ZMQError):
        log.warning("CURVE key file %s is damaged: making a new keypair", path)
    _, secret = zmq.curve_keypair()
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    return secret
