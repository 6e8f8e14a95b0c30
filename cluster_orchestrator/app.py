"""Assemble and run one cluster orchestrator process: store, core, MQTT bus and HTTP server.

:class:`ClusterRuntime` is what ``python -m cluster_orchestrator`` runs and what
integration tests start in-process: ``start`` opens everything, ``stop`` closes it in
reverse order (loops, MQTT, HTTP, store) and is idempotent.

Security (:class:`ClusterSecurity`, all off by default for tests that embed a runtime): the
root's token guards the root's routes, join tokens guard node registration, and an MQTT auth
dir makes the cluster the owner of the broker's password file (:mod:`.mqtt_auth`).
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from cluster_orchestrator.api import ClusterAccess, create_app
from cluster_orchestrator.artifacts import ArtifactCache
from cluster_orchestrator.metrics import core_metrics
from cluster_orchestrator.mqtt_auth import MqttCredentials
from cluster_orchestrator.mqtt_bus import MqttBus, can_connect, parse_mqtt_url
from cluster_orchestrator.nodes import JoinTokens
from cluster_orchestrator.orchestrator import ClusterConfig, ClusterOrchestrator
from cluster_orchestrator.root_client import RootClient
from cluster_orchestrator.store_mongo import DEFAULT_DB as CLUSTER_DATABASE
from cluster_orchestrator.store_mongo import open_cluster_store
from treeline_common.clock import Clock
from treeline_common.mongo_server import MongoServerProcess, start_mongo_server
from treeline_common.mqtt_acl import CLUSTER_USER, TlsFiles
from treeline_common.wsgi import HttpServer, make_http_server

log = logging.getLogger(__name__)


def build_config(name: str, root_url: str, mqtt_url: str, public_url: str,
                 **options: object) -> ClusterConfig:
    host, port = parse_mqtt_url(mqtt_url)
    return ClusterConfig(name=name, root_url=root_url.rstrip("/"), public_url=public_url.rstrip("/"),
                         mqtt_host=host, mqtt_port=port, **options)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ClusterSecurity:
    """Credentials of one cluster process (see the module docstring); the defaults check nothing.

    ``root_token``: the root's calls must carry it (the cluster token this cluster also sends to
    the root). ``join_tokens``: node registration needs a join token; ``join_token`` is accepted
    as the initial one (else one is made at the first start and logged once). ``mqtt_auth_dir``:
    the broker's password/ACL/pid files, owned by this cluster, which logs in as
    ``mqtt_username``/``mqtt_password``. ``mqtt_tls``: MQTT over TLS (nodes are told so).
    """

    root_token: str | None = None
    join_tokens: bool = False
    join_token: str | None = None
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_auth_dir: Path | None = None
    mqtt_tls: TlsFiles | None = None
    production: bool = False  # serve under waitress (werkzeug's development server otherwise)


class ClusterRuntime:
    def __init__(self, config: ClusterConfig, data_dir: str | Path, host: str, port: int,
                 mqtt_url: str, clock: Clock | None = None, *, instance_id: str | None = None,
                 security: ClusterSecurity | None = None, store_url: str | None = None) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.instance_id = instance_id
        self.security = security or ClusterSecurity()
        # run alone (no store URL): a MongoDB wire server of its own, data in <data_dir>/mongo
        self._embedded: MongoServerProcess | None = None
        if not store_url:
            self._embedded = start_mongo_server(Path(data_dir) / "mongo")
            store_url = self._embedded.db_url(CLUSTER_DATABASE)
        self.store = open_cluster_store(store_url, data_dir)
        self.root = RootClient(config.root_url)
        self.core = ClusterOrchestrator(config, self.store, self.root, clock=clock,
                                        artifacts=ArtifactCache(Path(data_dir) / "artifacts"))
        sec = self.security
        username = sec.mqtt_username or (CLUSTER_USER if sec.mqtt_auth_dir else None)
        self.bus = MqttBus(mqtt_url, self.core, client_id=f"treeline-cluster-{config.name}",
                           username=username, password=sec.mqtt_password, tls=sec.mqtt_tls)
        self.core.set_bus(self.bus)
        self.join_tokens = JoinTokens(self.store, self.core.clock) if sec.join_tokens else None
        self.mqtt_credentials: MqttCredentials | None = None
        if sec.mqtt_auth_dir is not None:
            if not sec.mqtt_password:
                raise ValueError("an MQTT auth dir needs the cluster's own MQTT password")
            probe = functools.partial(can_connect, config.mqtt_host, config.mqtt_port, tls=sec.mqtt_tls)
            self.mqtt_credentials = MqttCredentials(self.store, sec.mqtt_auth_dir, username or CLUSTER_USER,
                                                    sec.mqtt_password, probe=probe)
        self._server: HttpServer | None = None
        self._server_thread: threading.Thread | None = None
        self._stopped = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def access(self) -> ClusterAccess:
        """What the REST app checks (see :mod:`.api`)."""
        return ClusterAccess(root_token=self.security.root_token, join_tokens=self.join_tokens,
                             mqtt=self.mqtt_credentials, mqtt_tls=self.security.mqtt_tls is not None)

    def start(self) -> None:
        # bind first: a taken port fails before anything is made or written
        app = create_app(self.core, self.instance_id, self.access(),
                         core_metrics(self.core, self.bus.dropped))
        self._server = make_http_server(app, self.host, self.port, production=self.security.production)
        if self.join_tokens is not None:
            made = self.join_tokens.ensure_initial(self.security.join_token)
            if made:  # printed this once: only its digest is kept
                log.info("cluster %s: join token for node engines (--join-token / TREELINE_JOIN_TOKEN), "
                         "shown once: %s", self.config.name, made)
        if self.mqtt_credentials is not None:
            self.mqtt_credentials.start()
        if not self.security.root_token:
            log.info("no root token: the root's routes (jobs, plans, profiles) accept any caller")
        self.port = self._server.port
        if not self.config.public_url:  # advertise the address actually bound (port 0 = a free one)
            self.config = replace(self.config, public_url=self.url)
            self.core.config = self.config
            self.core.sync.public_url = self.url
        self._server_thread = self._server.serve_in_thread("cluster-http")
        self.bus.start()
        self.core.start()
        log.info("cluster %s listening on %s (mqtt %s:%s, root %s)", self.config.name, self.url,
                 self.config.mqtt_host, self.config.mqtt_port, self.config.root_url)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.core.stop()
        self.bus.stop()
        if self._server is not None:
            self._server.shutdown()
        if self._server_thread is not None:
            self._server_thread.join(5)
        self.root.close()
        self.store.close()
        if self._embedded is not None:
            self._embedded.stop()
        log.info("cluster %s stopped", self.config.name)
