"""X-Request-ID at the root and the cluster: echoed on every answer (given, generated, a bad one
replaced) and carried, with the route's deployment, by every log line of the request."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, jsonify
from flask.testing import FlaskClient

from cluster_orchestrator.api import create_app as create_cluster_app
from cluster_orchestrator.orchestrator import ClusterConfig, ClusterOrchestrator
from cluster_orchestrator.root_client import RootClient
from cluster_orchestrator.store import InMemoryClusterStateStore
from root_orchestrator.api.guard import access
from root_orchestrator.auth.principals import PUBLIC
from root_orchestrator.stores import open_stores
from tests.unit.test_root_api import Root
from treeline_common.clock import FakeClock
from treeline_common.logs import ContextFilter, PlainFormatter

PROBE = "treeline.test.request_ids"
GENERATED = re.compile(r"[0-9a-f]{32}")


class Lines:
    """Plain lines of the ``PROBE`` logger, through the filter and formatter every process uses."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(PlainFormatter("%(levelname)s %(name)s: %(message)s"))
        self.handler.addFilter(ContextFilter())

    def text(self) -> str:
        return self.stream.getvalue()


@pytest.fixture
def lines() -> Iterator[Lines]:
    probe, captured = logging.getLogger(PROBE), Lines()
    probe.addHandler(captured.handler)
    probe.setLevel(logging.INFO)
    yield captured
    probe.removeHandler(captured.handler)


def add_probe(app: Flask, rule: str, decorate: Any = None) -> None:
    """A view at ``rule`` that logs one line (added before the app's first request)."""
    def probe(**args: str) -> Any:
        logging.getLogger(PROBE).info("probe view %s", sorted(args.values()))
        return jsonify({"ok": True})
    app.add_url_rule(rule, "log_probe", decorate(probe) if decorate else probe)


@pytest.fixture
def root(mongo_url: str, lines: Lines) -> Iterator[Root]:
    stores = open_stores(mongo_url)
    made = Root(stores)
    add_probe(made.app, "/api/service/<service_id>/log-probe", access(PUBLIC))
    yield made
    stores.close()


@pytest.fixture
def cluster(lines: Lines) -> FlaskClient:
    config = ClusterConfig(name="c1", root_url="http://127.0.0.1:9", public_url="http://127.0.0.1:10100",
                           mqtt_host="127.0.0.1", mqtt_port=1883)
    store = InMemoryClusterStateStore()
    store.set_setting("cluster_id", "cid-1")
    core = ClusterOrchestrator(config, store, RootClient(config.root_url), None, FakeClock())
    app = create_cluster_app(core)
    add_probe(app, "/api/deployments/<service_id>/<instance>/log-probe")
    return app.test_client()


def echoed(client: FlaskClient, path: str, given: str | None = None, method: str = "GET") -> str:
    headers = {"X-Request-ID": given} if given is not None else {}
    return str(client.open(path, method=method, headers=headers).headers["X-Request-ID"])


def test_the_root_echoes_a_given_id_and_replaces_a_bad_one(root: Root) -> None:
    anonymous = root.client()
    assert echoed(anonymous, "/api/health", "trace-1.A_b") == "trace-1.A_b"
    generated = echoed(anonymous, "/api/health")
    assert GENERATED.fullmatch(generated) and echoed(anonymous, "/api/health") != generated
    for bad in ("has space", "x" * 65, "a\tb"):
        assert GENERATED.fullmatch(echoed(anonymous, "/api/health", bad))
    # errors too: an unknown route (404), the guard's refusal (401), an error handler's answer
    assert echoed(anonymous, "/api/no-such-route", "e-404") == "e-404"
    assert echoed(anonymous, "/api/applications/someone", "e-401") == "e-401"
    assert echoed(root.http, "/api/service/nope", "e-svc") == "e-svc"


def test_a_root_log_line_carries_the_request_and_the_service(root: Root, lines: Lines) -> None:
    response = root.client().get("/api/service/svc-7/log-probe", headers={"X-Request-ID": "req-42"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "probe view ['svc-7'] request_id=req-42 deployment_id=svc-7" in lines.text()
    logging.getLogger(PROBE).info("after the request")  # unbound at teardown
    assert lines.text().splitlines()[-1] == f"INFO {PROBE}: after the request"


def test_the_cluster_echoes_ids_and_logs_the_deployment(cluster: FlaskClient, lines: Lines) -> None:
    assert echoed(cluster, "/api/health", "c-1") == "c-1"
    assert GENERATED.fullmatch(echoed(cluster, "/api/health", "no/slash"))
    assert echoed(cluster, "/api/deployments/s1/0", "c-404") == "c-404"  # NotFound, from the error mapping
    assert echoed(cluster, "/api/service/s1/0", "c-400", method="POST") == "c-400"  # no body, and no token
    response = cluster.get("/api/deployments/s1/0/log-probe", headers={"X-Request-ID": "c-2"})
    assert response.status_code == 200
    generated = cluster.get("/api/deployments/s2/3/log-probe").headers["X-Request-ID"]
    assert lines.text().splitlines() == [
        f"INFO {PROBE}: probe view ['0', 's1'] request_id=c-2 deployment_id=s1-0",
        f"INFO {PROBE}: probe view ['3', 's2'] request_id={generated} deployment_id=s2-3"]


def test_a_request_made_inside_another_leaves_no_ids_behind() -> None:
    """A test client call inside a view shares the outer request's app context (and ``g``): each
    keeps its own id, and both are unbound when they end."""
    from flask import Flask

    from treeline_common.logs import current_log_context
    from treeline_common.request_context import install_request_ids

    app = Flask("nested")
    install_request_ids(app)
    seen: dict[str, str] = {}

    @app.get("/inner")
    def inner() -> str:
        return current_log_context().request_id

    @app.get("/outer")
    def outer() -> str:
        seen["inner"] = app.test_client().get("/inner", headers={"X-Request-ID": "in-1"}).get_data(as_text=True)
        seen["after_inner"] = current_log_context().request_id
        return "ok"

    answer = app.test_client().get("/outer", headers={"X-Request-ID": "out-1"})
    assert answer.headers["X-Request-ID"] == "out-1"
    assert seen == {"inner": "in-1", "after_inner": "out-1"}
    assert current_log_context().request_id == "" and current_log_context().deployment_id == ""
