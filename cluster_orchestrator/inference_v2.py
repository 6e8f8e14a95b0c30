"""The Open Inference Protocol (KServe v2 REST) for every deployment of this cluster.

A stable address per service: ``http://<cluster>/v2/models/<name>`` where ``<name>`` is the
service id, ``<service id>-<instance>`` (the deployment id) or the microservice's name when only
one deployment here has it. The cluster forwards each request to the deployment's *current*
entry over the data plane (:class:`~node_engine.data_plane.service_client.ServiceClient`, which
re-resolves the entry from the deployment document and retries with the same request id), so a
re-plan, a failover inside the cluster or a moved entry is invisible to curl, Triton's or
KServe's clients. Routes (https://kserve.github.io/website/docs/concepts/architecture/data-plane/v2-protocol):

- ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2`` (server metadata);
- ``GET /v2/models/<name>`` (inputs and outputs from the registry's signature),
  ``GET /v2/models/<name>/ready`` (200 while RUNNING, else 503);
- ``POST /v2/models/<name>/infer``: JSON tensors, or the binary tensor data extension
  (:mod:`treeline_common.inference_v2`).

Security: a service whose SLA makes callers sign requests (``model.privacy``) needs
``Authorization: Bearer <caller key>`` (the key its owner reads at the root); the gateway then
signs the data-plane request with it. Errors are the protocol's ``{"error": "..."}`` bodies with
4xx for the caller's mistakes and 503 when the service does not answer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, Response, jsonify, request

from cluster_orchestrator.keys import caller_key
from cluster_orchestrator.orchestrator import ClusterOrchestrator
from deployment_descriptors.views import callers_must_sign
from node_engine.data_plane.service_client import RetryPolicy, ServiceClient
from treeline_common.errors import (
    InvalidInput,
    NotFound,
    TreelineError,
    Unauthorized,
    Unavailable,
    http_status,
)
from treeline_common.http import install_body_limits
from treeline_common.inference_v2 import (
    HEADER_LENGTH,
    bearer_matches,
    check_inputs,
    decode_request,
    encode_response,
    tensor_metadata,
)
from treeline_common.jobs import JobStatus

log = logging.getLogger(__name__)

MAX_BODY = 256 << 20  # one request's tensors
POLICY = RetryPolicy(deadline=30.0, attempt_timeout=10.0)
# s a name's lookup is reused: reading every deployment from the store took 1.5-2 ms a request on
# the embedded MongoDB (measured under load), half the gateway's overhead; a document this old is
# only used to pick the deployment and its caller rule (its entry is resolved afresh on a failure)
FIND_TTL = 1.0
FIND_CACHE = 1024  # names remembered at most


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


class V2Gateway:
    """Finds deployments by name and sends requests to their entries through pooled clients."""

    def __init__(self, core: ClusterOrchestrator) -> None:
        self.core = core
        self._lock = threading.Lock()
        self._pools: dict[str, list[ServiceClient]] = {}
        self._found: dict[str, tuple[float, dict[str, Any]]] = {}  # name -> (when read, deployment)

    def find(self, name: str) -> dict[str, Any]:
        """The deployment a model name means (see the module docstring); NotFound otherwise.
        A name found in the last :data:`FIND_TTL` seconds is not looked up again."""
        now = self.core.clock.monotonic()
        with self._lock:
            hit = self._found.get(name)
        if hit is not None and now - hit[0] < FIND_TTL:
            return hit[1]
        doc = self._lookup(name)
        with self._lock:
            if len(self._found) >= FIND_CACHE:
                self._found.clear()
            self._found[name] = (now, doc)
        return doc

    def _lookup(self, name: str) -> dict[str, Any]:
        docs = [d for d in self.core.book.list_deployments() if d.get("status") != JobStatus.DELETED.value]
        exact = [d for d in docs if name in (d.get("deployment_id"), d.get("service_id"))]
        by_name = [d for d in docs
                   if ((d.get("job") or {}).get("microservice") or {}).get("microservice_name") == name]
        found = exact or by_name
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise InvalidInput(f"model name {name!r} is ambiguous here",
                               [{"path": "name", "message": "use the service id or <service id>-<instance>: "
                                 + ", ".join(str(d.get("deployment_id")) for d in found)}])
        raise NotFound(f"no model {name!r} on this cluster", [{"path": "name", "message": "unknown model"}])

    def _key(self, doc: dict[str, Any]) -> str:
        return caller_key(self.core.data_secret(), str(doc["deployment_id"]))

    @staticmethod
    def callers_sign(doc: dict[str, Any]) -> bool:
        """Whether the service's SLA makes callers sign (a ``privacy`` block, unless
        ``authenticate_callers`` is false)."""
        return callers_must_sign((doc.get("job") or {}).get("microservice"))

    def check_caller(self, doc: dict[str, Any], authorization: str) -> None:
        """Unauthorized unless the service lets anybody call or the caller shows its key."""
        if not self.callers_sign(doc):
            return
        if not bearer_matches(authorization, self._key(doc)):
            raise Unauthorized("this service's callers must sign: send Authorization: Bearer <caller key>",
                               [{"path": "Authorization", "message": "missing or wrong caller key"}])

    def _resolver(self, deployment_id: str) -> Callable[[], tuple[str, str, str]]:
        def resolve() -> tuple[str, str, str]:
            doc = self.core.book.require(deployment_id)
            entry = (doc.get("placement") or {}).get("entry") or {}
            if not entry.get("endpoint") or not entry.get("stage_key"):
                raise RuntimeError(f"deployment {deployment_id} has no entry (status {doc.get('status')})")
            key = self._key(doc) if self.callers_sign(doc) else ""  # nodes of an open service check no key
            return str(entry["endpoint"]), str(entry["stage_key"]), key
        return resolve

    @contextmanager
    def client(self, deployment_id: str) -> Iterator[ServiceClient]:
        """A client of ``deployment_id`` for this request only: taken from the deployment's pool
        (or made) and put back afterwards, so concurrent requests never share a zmq socket and a
        request never pays for a new connection (a zmq socket may change threads between uses)."""
        with self._lock:
            pool = self._pools.setdefault(deployment_id, [])
            client = pool.pop() if pool else None
        if client is None:
            client = ServiceClient(self._resolver(deployment_id), service=deployment_id, policy=POLICY)
        try:
            yield client
        finally:
            with self._lock:
                self._pools.setdefault(deployment_id, []).append(client)


def input_specs(doc: dict[str, Any]) -> list[dict[str, Any]] | None:
    """What the service's inputs are: the placement's specs (the SLA's), else the model signature's."""
    specs = (doc.get("placement") or {}).get("inputs") or \
        (((doc.get("job") or {}).get("model") or {}).get("signature") or {}).get("inputs")
    return list(specs) if specs else None


def metadata(doc: dict[str, Any]) -> dict[str, Any]:
    """``GET /v2/models/<name>``: name, versions, platform and the signature's tensors."""
    model = (doc.get("job") or {}).get("model") or {}
    signature = model.get("signature") or {}
    return {"name": str(doc.get("service_id")), "versions": [str(model.get("version", ""))],
            "platform": "onnxruntime_onnx", "deployment_id": doc.get("deployment_id"),
            "treeline_model": model.get("name"),
            "inputs": tensor_metadata(signature.get("inputs") or []),
            "outputs": tensor_metadata(signature.get("outputs") or [])}


def register(app: Flask, core: ClusterOrchestrator, public: Callable[[Any], Any]) -> None:
    """Add the v2 routes to the cluster's app; ``public`` declares a view open (the caller key,
    when a service needs one, is checked per service inside the view)."""
    gateway = V2Gateway(core)
    install_body_limits(app, {"v2_infer": MAX_BODY})

    @app.get("/v2/health/live")
    @public
    def v2_live() -> Any:
        return jsonify({"live": True})

    @app.get("/v2/health/ready")
    @public
    def v2_ready() -> Any:
        return jsonify({"ready": True})

    @app.get("/v2")
    @public
    def v2_server() -> Any:
        return jsonify({"name": f"treeline-cluster-{core.config.name}", "version": "2",
                        "extensions": ["binary_tensor_data"]})

    @app.get("/v2/models/<name>")
    @public
    def v2_model(name: str) -> Any:
        try:
            return jsonify(metadata(gateway.find(name)))
        except TreelineError as exc:
            return _error(http_status(exc), str(exc))

    @app.get("/v2/models/<name>/ready")
    @public
    def v2_model_ready(name: str) -> Any:
        try:
            doc = gateway.find(name)
        except TreelineError as exc:
            return _error(http_status(exc), str(exc))
        running = doc.get("status") in (JobStatus.RUNNING.value, JobStatus.DEGRADED.value)
        if not running:
            return _error(503, f"status {doc.get('status')}")
        return jsonify({"name": name, "ready": True})

    @app.post("/v2/models/<name>/infer")
    @public
    def v2_infer(name: str) -> Any:
        try:
            doc = gateway.find(name)
            gateway.check_caller(doc, request.headers.get("Authorization", ""))
            body = request.get_data(cache=False)  # the app limits it to MAX_BODY (413 beyond)
            req = decode_request(body, request.headers.get(HEADER_LENGTH))
            check_inputs(input_specs(doc), req.inputs)  # a caller's mistake is 400 before anything runs
            with gateway.client(str(doc["deployment_id"])) as client:
                [outcome] = client.infer_many([req.inputs], max_in_flight=1)
            if outcome.error is not None:
                raise Unavailable(f"the service did not answer: {outcome.error.reason}",
                                  [{"path": "inputs", "message": outcome.error.reason}])
            model = (doc.get("job") or {}).get("model") or {}
            payload, headers = encode_response(name, str(model.get("version", "")), req, outcome.outputs)
        except TreelineError as exc:
            return _error(http_status(exc), str(exc))
        return Response(payload, status=200, headers=headers)
