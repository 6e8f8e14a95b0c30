"""The Open Inference Protocol (KServe v2 REST) at the entry node: the fast path past the cluster.

Started only with ``--v2-port`` (:mod:`node_engine.config`; 0 picks a free port): a small
HTTP/1.1 keep-alive server from the standard library (``http.server``; a node carries no web
framework) answering, for every deployment whose entry stage this node holds
(:mod:`node_engine.v2_models`):

- ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2`` (server metadata);
- ``GET /v2/models/<name>`` (inputs from the entry stage's onnxruntime session, outputs from the
  last stage when the whole chain runs here) and ``GET /v2/models/<name>/ready``;
- ``POST /v2/models/<name>/infer``: JSON tensors or the binary tensor data extension
  (:mod:`treeline_common.inference_v2`, the codec the cluster's gateway uses).

A deployment that is one stage on a native device runs in the HTTP thread (:class:`LocalLane`:
the tensors go from the request body to onnxruntime without a socket or a copy), while one of
its two lanes is free. Every other request goes to the node's own data plane over one loopback
zmq hop (:class:`~node_engine.data_plane.client.TensorClient` to the plain endpoint, signed with
the caller key when the service needs one), so it meets the same bounds, access rule, emulated
device and forwarding as a zmq caller. For MobileNetV2's 600 KB input the hop costs about
0.6 ms p50 on loopback (measured under load on a 2-core host), about as much as the rest of the
v2 path together.

The stable address of a service stays the cluster's (``<cluster>/v2/models/<service>``): it
follows the entry through re-plans. This port is the fast path while the entry stays here; a
name this node holds only inner stages of is answered ``307`` to the cluster's URL, any other
unknown name ``404``. Errors are ``{"error": "..."}`` with 4xx naming the field for the caller's
mistakes and 503 when the pipeline does not answer; never a traceback.

Threading: one thread per connection (at most :data:`MAX_CONNECTIONS`; an idle keep-alive
connection is closed after :data:`IDLE_TIMEOUT` s); a request borrows a client from a pool, so
no zmq socket is shared between threads.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import numpy as np
import zmq

from node_engine.data_plane.client import DataPlaneError, TensorClient
from node_engine.stages import LoadedStage, StageRunner, StageTable
from node_engine.v2_models import NotHere, caller_key, check_caller, find, input_specs, metadata
from treeline_common.errors import InvalidInput, PayloadTooLarge, TreelineError, Unavailable, http_status
from treeline_common.inference_v2 import HEADER_LENGTH, check_inputs, decode_request, encode_response
from treeline_common.tensor_wire import BAD_REQUEST, UNKNOWN_STAGE

log = logging.getLogger(__name__)

MAX_BODY = 256 << 20  # one request's tensors, as at the cluster
MAX_CONNECTIONS = 64  # connections served at once; more are closed at accept
IDLE_TIMEOUT = 60.0  # s a connection may sit between requests (or mid-request) before it is closed
INFER_TIMEOUT = 30.0  # s the data plane has to answer one request
POLL_INTERVAL = 0.25  # s: how soon close() stops the accept loop


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, body and extra headers (Content-Length is added on sending)."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


def json_reply(status: int, doc: Any, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(doc, separators=(",", ":")).encode(),
                 {"Content-Type": "application/json", **(headers or {})})


class DataPlaneHop:
    """Clients of this node's data plane, pooled per signing key; thread-safe."""

    def __init__(self, endpoint: str, timeout: float = INFER_TIMEOUT) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._lock = threading.Lock()
        self._pools: dict[str, list[TensorClient]] = {}
        self._loans = 0  # clients out with a request right now
        self._closed = False

    def infer(self, stage_key: str, inputs: Mapping[str, np.ndarray], key: str = "") -> dict[str, np.ndarray]:
        """The pipeline's outputs; DataPlaneError for an error reply, TimeoutError for none."""
        with self._lock:
            if self._closed:
                raise Unavailable("the node is shutting down")
            pool = self._pools.setdefault(key, [])
            client = pool.pop() if pool else None
            self._loans += 1
        if client is None:
            client = TensorClient(self.endpoint, context=self._ctx, key=key)
        reuse = False
        try:
            outputs, _ = client.infer(stage_key, inputs, timeout=self.timeout)
            reuse = True
        except DataPlaneError:
            reuse = True  # answered (with an error): nothing late can follow
            raise
        finally:  # after a timeout the late answer may still come: that socket is not reused
            with self._lock:
                self._loans -= 1
                if reuse and not self._closed:
                    self._pools.setdefault(key, []).append(client)
                else:
                    client.close()
                term = self._closed and not self._loans
            if term:
                self._ctx.term()
        return outputs

    def close(self) -> None:
        """Close every idle client; the context ends with the last client on loan. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            clients = [c for pool in self._pools.values() for c in pool]
            self._pools.clear()
            term = not self._loans
        for client in clients:
            client.close()
        if term:
            self._ctx.term()


class LocalLane:
    """Runs a deployment that is one stage on this node in the calling thread: no socket, no copy.

    At most ``lanes`` at a time; a request that finds every lane busy, or a deployment that goes
    on to another stage, takes the data plane instead (its bounds, queue and forwarding). For a
    native device only: an emulated device computes one request at a time, which only its data
    plane's single worker keeps. Thread-safe.
    """

    def __init__(self, runner: StageRunner, lanes: int = 2) -> None:
        self._runner = runner
        self._free = threading.BoundedSemaphore(lanes)

    def run(self, stage: LoadedStage, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The stage's outputs, or None when this request is not for the lane (see the class)."""
        if stage.relay or stage.next is not None or stage.cascade is not None \
                or not self._free.acquire(blocking=False):
            return None
        try:
            produced, _ = self._runner.run(stage, inputs)
            return stage.select_outputs(inputs, produced)
        except Exception as exc:  # noqa: BLE001 - what the data plane answers as stage_failed
            log.warning("stage %s failed: %s", stage.key, exc)
            raise Unavailable(f"stage {stage.key} failed: {exc}",
                              [{"path": "inputs", "message": str(exc)}]) from None
        finally:
            self._free.release()


class V2Routes:
    """The protocol's routes over the node's stage table; ``read_body`` is called at most once."""

    def __init__(self, stages: StageTable, hop: DataPlaneHop, cluster_url: str = "",
                 name: str = "node", lane: LocalLane | None = None) -> None:
        self.stages = stages
        self.hop = hop
        self.lane = lane
        self.cluster_url = cluster_url.rstrip("/")
        self.name = name

    def handle(self, method: str, target: str, headers: Message, read_body: Callable[[], bytes]) -> Reply:
        path = urlsplit(target).path.rstrip("/")
        parts = [unquote(p) for p in path.split("/")[1:]]
        try:
            return self._route(method, parts, headers, read_body)
        except NotHere as exc:
            if not self.cluster_url:
                return json_reply(404, {"error": str(exc)})
            location = f"{self.cluster_url}/v2/models/{quote(parts[2], safe='')}" + \
                "".join(f"/{p}" for p in parts[3:])
            return json_reply(307, {"error": f"{exc}; its stable address is {location}"},
                              {"Location": location})
        except TreelineError as exc:
            return json_reply(http_status(exc), {"error": str(exc)})

    def _route(self, method: str, parts: list[str], headers: Message,
               read_body: Callable[[], bytes]) -> Reply:
        rest = parts[1:]
        if parts[:1] != ["v2"] or not _known(rest):
            return json_reply(404, {"error": f"no route /{'/'.join(parts)} (the v2 API: /v2/health/ready, "
                                             "/v2/models/<name>, /v2/models/<name>/infer)"})
        wanted = "POST" if rest[2:] == ["infer"] else "GET"
        if method != wanted:
            return json_reply(405, {"error": f"use {wanted} here"}, {"Allow": wanted})
        if not rest:
            return json_reply(200, {"name": f"treeline-node-{self.name}", "version": "2",
                                    "extensions": ["binary_tensor_data"]})
        if rest[0] == "health":
            return json_reply(200, {rest[1]: True})
        name = rest[1]
        entry = find(self.stages, name)
        if len(rest) == 2:
            return json_reply(200, metadata(self.stages, name, entry))
        if rest[2] == "ready":
            return json_reply(200, {"name": name, "ready": True})
        return self._infer(name, headers, read_body)

    def _infer(self, name: str, headers: Message, read_body: Callable[[], bytes]) -> Reply:
        check_caller(find(self.stages, name), headers.get("Authorization", ""))
        request = decode_request(read_body(), headers.get(HEADER_LENGTH))
        for attempt in (1, 2):
            entry = find(self.stages, name)  # again: a re-plan may have replaced the entry meanwhile
            check_inputs(input_specs(self.stages, entry), request.inputs)
            local = self.lane.run(entry, request.inputs) if self.lane is not None else None
            if local is not None:
                outputs = local
                break
            try:
                outputs = self.hop.infer(entry.key, request.inputs, caller_key(entry))
                break
            except DataPlaneError as exc:
                if exc.code == UNKNOWN_STAGE and attempt == 1:
                    continue  # the generation went away between find and the hop: take the new one
                if exc.code == BAD_REQUEST:
                    raise InvalidInput(f"the service refused the request: {exc}",
                                       [{"path": "inputs", "message": str(exc)}]) from None
                raise Unavailable(f"the service did not answer: {exc}",
                                  [{"path": "inputs", "message": str(exc)}]) from None
            except TimeoutError as exc:
                raise Unavailable(f"the service did not answer: {exc}", []) from None
        payload, extra = encode_response(name, "", request, outputs)  # the registry version is the cluster's
        return Reply(200, payload, extra)


def _known(rest: list[str]) -> bool:
    """Whether ``/v2/<rest>`` is one of the protocol's routes served here."""
    if rest in ([], ["health", "live"], ["health", "ready"]):
        return True
    return rest[:1] == ["models"] and (len(rest) == 2 or (len(rest) == 3 and rest[2] in ("ready", "infer")))


class _Handler(BaseHTTPRequestHandler):
    """One connection: requests one after the other (keep-alive), each answered by :class:`V2Routes`."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave as two writes: never wait for an ACK
    timeout = IDLE_TIMEOUT
    server: _Server
    _pending = 0  # body bytes of the current request not read yet

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        try:
            self._pending = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._pending = -1
        try:
            reply = self.server.routes.handle(method, self.path, self.headers, self._read_body)
        except Exception:
            log.exception("v2 %s %s failed", method, self.path)
            reply = json_reply(500, {"error": "internal error (see the node's log)"})
        if self._pending or self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # an unread body would be taken for the next request
        self._send(reply)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise InvalidInput("send the body with a Content-Length (chunked bodies are not taken)",
                               [{"path": "Transfer-Encoding", "message": "not supported"}])
        if self._pending < 0:
            raise InvalidInput("Content-Length must be a non-negative integer",
                               [{"path": "Content-Length", "message": "not an integer"}])
        if self._pending > MAX_BODY:
            raise PayloadTooLarge(f"the body is {self._pending} bytes; at most {MAX_BODY} are taken",
                                  [{"path": "Content-Length", "message": f"over {MAX_BODY} bytes"}])
        want, self._pending = self._pending, 0
        body = self.rfile.read(want)
        if len(body) != want:
            self.close_connection = True
            raise InvalidInput(f"the body ended after {len(body)} of {want} bytes",
                               [{"path": "Content-Length", "message": "more than was sent"}])
        return body

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line, an unknown method) as JSON."""
        self.close_connection = True
        self._send(json_reply(code, {"error": message or explain or "bad request"}))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("v2 %s: " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], routes: V2Routes) -> None:
        super().__init__(address, _Handler)
        self.routes = routes
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("v2: %d connections open, refusing %s", MAX_CONNECTIONS, client_address)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class V2Server:
    """The node's v2 endpoint on ``host:port`` (0: a free one). No I/O until :meth:`start`;
    :meth:`close` is idempotent."""

    def __init__(self, stages: StageTable, data_endpoint: str, *, host: str = "127.0.0.1", port: int = 0,
                 cluster_url: str = "", name: str = "node", timeout: float = INFER_TIMEOUT,
                 runner: StageRunner | None = None) -> None:
        self._stages = stages
        self._lane = LocalLane(runner) if runner is not None else None
        self._data_endpoint = data_endpoint
        self._address = (host, port)
        self._cluster_url = cluster_url
        self._name = name
        self._timeout = timeout
        self._server: _Server | None = None
        self._hop: DataPlaneHop | None = None
        self.url = ""

    def start(self) -> str:
        """Bind, serve in a daemon thread and return ``http://host:port``; OSError if the port is taken."""
        self._hop = DataPlaneHop(self._data_endpoint, self._timeout)
        routes = V2Routes(self._stages, self._hop, self._cluster_url, self._name, self._lane)
        self._server = _Server(self._address, routes)
        self.url = f"http://{self._address[0]}:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, args=(POLL_INTERVAL,), name="v2-http",
                         daemon=True).start()
        log.info("v2 REST (Open Inference Protocol) on %s/v2", self.url)
        return self.url

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._hop is not None:
            self._hop.close()
            self._hop = None


def start_v2(port: int | None, stages: StageTable, data_endpoint: str, *, host: str, cluster_url: str,
             name: str, runner: StageRunner | None) -> V2Server | None:
    """The node's v2 endpoint, started, when ``port`` is set (``--v2-port``); None when it is off.
    ``runner``: the node's, for the :class:`LocalLane` (None on an emulated device). OSError when
    the port cannot be bound (the daemon exits: the operator asked for it)."""
    if port is None:
        return None
    server = V2Server(stages, data_endpoint, host=host, port=port, cluster_url=cluster_url, name=name,
                      runner=runner)
    server.start()
    return server
