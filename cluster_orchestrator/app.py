"""Assemble and run one cluster orchestrator process: store, core, MQTT bus and HTTP server.

:class:`ClusterRuntime` is what ``python -m cluster_orchestrator`` runs and what
integration tests start in-process: ``start`` opens everything, ``stop`` closes it in
reverse order (loops, MQTT, HTTP, store) and is idempotent.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path

from werkzeug.serving import BaseWSGIServer, make_server

from cluster_orchestrator.api import create_app
from cluster_orchestrator.artifacts import ArtifactCache
from cluster_orchestrator.mqtt_bus import MqttBus, parse_mqtt_url
from cluster_orchestrator.orchestrator import ClusterConfig, ClusterOrchestrator
from cluster_orchestrator.root_client import RootClient
from cluster_orchestrator.store import SqliteClusterStateStore
from treeline_common.clock import Clock

log = logging.getLogger(__name__)


def build_config(name: str, root_url: str, mqtt_url: str, public_url: str,
                 **options: object) -> ClusterConfig:
    host, port = parse_mqtt_url(mqtt_url)
    return ClusterConfig(name=name, root_url=root_url.rstrip("/"), public_url=public_url.rstrip("/"),
                         mqtt_host=host, mqtt_port=port, **options)  # type: ignore[arg-type]


class ClusterRuntime:
    def __init__(self, config: ClusterConfig, data_dir: str | Path, host: str, port: int,
                 mqtt_url: str, clock: Clock | None = None) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.store = SqliteClusterStateStore.in_data_dir(data_dir)
        self.root = RootClient(config.root_url)
        self.core = ClusterOrchestrator(config, self.store, self.root, clock=clock,
                                        artifacts=ArtifactCache(Path(data_dir) / "artifacts"))
        self.bus = MqttBus(mqtt_url, self.core, client_id=f"treeline-cluster-{config.name}")
        self.core.set_bus(self.bus)
        self._server: BaseWSGIServer | None = None
        self._server_thread: threading.Thread | None = None
        self._stopped = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._server = make_server(self.host, self.port, create_app(self.core), threaded=True)
        self.port = self._server.server_port
        if not self.config.public_url:  # advertise the address actually bound (port 0 = a free one)
            self.config = replace(self.config, public_url=self.url)
            self.core.config = self.config
            self.core.sync.public_url = self.url
        self._server_thread = threading.Thread(target=self._server.serve_forever, name="cluster-http",
                                               daemon=True)
        self._server_thread.start()
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
            self._server.server_close()
        if self._server_thread is not None:
            self._server_thread.join(5)
        self.root.close()
        self.store.close()
        log.info("cluster %s stopped", self.config.name)
