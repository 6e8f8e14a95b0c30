"""Data-plane keys and CURVE routes of a deployment generation (pure; the cluster's side).

The cluster derives every key from one secret it keeps (:func:`new_cluster_secret`), so nothing
secret is stored with a placement (which the root sees) and a command re-sent later carries the
same key: a data key per deployment generation (stages of another generation or deployment
cannot feed a stage), a caller key per deployment (callers of a private service sign with it).
:func:`security_for` reads what a job's SLA asks (``privacy``) and the nodes' CURVE keys;
:func:`cluster_orchestrator.planning.deploy_commands` puts it all into the deploy commands.
The node side is :mod:`node_engine.data_plane.security`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DATA_KEY_CONTEXT = b"treeline-data-key/1"
CALLER_KEY_CONTEXT = b"treeline-caller-key/1"


def new_cluster_secret() -> bytes:
    """32 random bytes: the cluster's data-plane secret, from which every data key derives.

    Generate it once per cluster and keep it (configuration or the cluster's store): the
    keys of running deployments are re-derived from it when commands are re-sent.
    """
    return secrets.token_bytes(32)


def data_key(secret: bytes, deployment_id: str, generation: int) -> str:
    """The data key (64 hex digits) of one deployment generation: HMAC-SHA256 of the cluster secret.

    Derived, not drawn, so nothing secret is stored with the placement (which the root
    sees) and a command re-sent later (reconcile, a restarted cluster) carries the same key.
    Each generation has its own key: stages of another generation cannot feed this one.
    """
    message = DATA_KEY_CONTEXT + f"|{deployment_id}|{generation}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def caller_key(secret: bytes, deployment_id: str) -> str:
    """The caller key (64 hex digits) of a deployment, stable across generations (re-plans).

    Used when the root hands none down; whoever hands it to the service's owner must get it
    from the cluster then.
    """
    return hmac.new(secret, CALLER_KEY_CONTEXT + f"|{deployment_id}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class NodeCurve:
    """A node's CURVE server: the endpoint and Z85 public key it reports."""

    endpoint: str
    public_key: str


def node_curve_keys(nodes: Iterable[Mapping[str, Any]]) -> dict[str, NodeCurve]:
    """``node_id -> NodeCurve`` of every node document reporting ``data_curve_endpoint`` and
    ``curve_public_key`` (telemetry, fresher, over registration); nodes without both are left out."""
    found: dict[str, NodeCurve] = {}
    for doc in nodes:
        telemetry = doc.get("telemetry") or {}
        endpoint = telemetry.get("data_curve_endpoint") or doc.get("data_curve_endpoint")
        key = telemetry.get("curve_public_key") or doc.get("curve_public_key")
        if isinstance(endpoint, str) and endpoint and isinstance(key, str) and len(key) == 40:
            found[str(doc["node_id"])] = NodeCurve(endpoint, key)
    return found


@dataclass(frozen=True)
class DataPlaneSecurity:
    """What :func:`deploy_commands` needs to secure a deployment's data plane.

    ``secret``: the cluster secret (:func:`new_cluster_secret`); b"" leaves the data plane
    open (commands as before). ``authenticate_callers`` / ``encrypt_tensors``: the SLA's
    ``model.privacy`` (:func:`security_for`). ``caller_key``: the key callers sign with
    when they must; "" derives one (:func:`caller_key`). ``curve``: the nodes' CURVE
    servers (:func:`node_curve_keys`), needed with ``encrypt_tensors``.
    """

    secret: bytes = b""
    authenticate_callers: bool = False
    encrypt_tensors: bool = False
    caller_key: str = field(default="", repr=False)
    curve: Mapping[str, NodeCurve] = field(default_factory=dict)


def security_for(secret: bytes, microservice: Any, nodes: Iterable[Mapping[str, Any]] = (),
                 caller_key: str = "") -> DataPlaneSecurity:
    """The :class:`DataPlaneSecurity` of a job: its SLA model block's ``privacy``
    (``microservice`` is the deployment_descriptors view) and the nodes' CURVE keys."""
    model = getattr(microservice, "model", None)
    return DataPlaneSecurity(secret=secret, authenticate_callers=bool(model and model.authenticate_callers),
                             encrypt_tensors=bool(model and model.encrypt_tensors), caller_key=caller_key,
                             curve=node_curve_keys(nodes))


class EncryptionUnavailable(ValueError):
    """``encrypt_tensors`` is asked but a node that must receive tensors reports no CURVE key."""
