"""A fleet of virtual nodes in one process: registration, MQTT sessions, telemetry, commands.

:class:`Fleet` is the simulator's Python API (tests and benchmarks use it; ``python -m
node_engine.simulator`` wraps it)::

    fleet = Fleet(FleetConfig(cluster_url, nodes=1000, join_token=token))
    fleet.start()      # register every node over REST, connect, births; returns when all are up
    ...
    fleet.kill()       # crash: every socket reset, the broker publishes the last wills
    # or fleet.stop()  # leave: retained ``offline`` for every node, clean DISCONNECTs

What is real: the cluster's REST registration (join token as ``Authorization: Bearer``, the
per-node MQTT credentials of the answer), the MQTT topics and payloads of
:mod:`treeline_common.messages` (retained births and wills with ``seq``, ``NodeTelemetry`` with
the ``stages`` served, ``StageState`` answers, ``StageStats``, ``ProfileResult``), the broker.
What is not: stages are held, never downloaded or run (:mod:`.virtual_node`), telemetry
figures and profiles are synthetic (:mod:`.profiling`), and nobody listens at the data
endpoints (addresses in TEST-NET-1, RFC 5737: requests to a virtual stage cannot be answered).

Threads: ``register_workers`` for registration (start only), ``network_threads`` driving all
MQTT sessions, one telemetry scheduler, one profiler. Commands are applied on the network
threads (they only touch in-memory state and queue an answer).
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from node_engine.registration import Registration, register
from node_engine.simulator.config import FleetConfig
from node_engine.simulator.profiling import SyntheticProfiler
from node_engine.simulator.transport import FleetTransport
from node_engine.simulator.virtual_node import VirtualNode
from treeline_common import topics
from treeline_common.messages import (
    DeleteCommand,
    DeployCommand,
    PayloadError,
    ProfileCommand,
    ProfileResult,
    StageState,
    decode,
    encode,
)
from treeline_common.profiles import get_profile

log = logging.getLogger(__name__)

DEFAULT_TELEMETRY_INTERVAL = 2.0
DATA_HOST = "192.0.2.1"  # TEST-NET-1 (RFC 5737): virtual nodes have no data plane
REGISTER_TIMEOUT = 60.0  # s per registration call: a cluster issuing MQTT passwords serialises them


class Fleet:
    """Virtual nodes against one cluster; see the module docstring. Not restartable."""

    def __init__(self, config: FleetConfig, now: Callable[[], float] = time.time) -> None:
        """No I/O: :meth:`start` registers and connects."""
        self.config = config
        self._now = now
        first_seq = int(now() * 1000)
        self.nodes = [VirtualNode(self._name(i), get_profile(config.profile_of(i)), i, first_seq, config.seed)
                      for i in range(config.nodes)]
        self._stop = threading.Event()
        self._transport: FleetTransport | None = None
        self._profiler = SyntheticProfiler(self._answer_profile, now, config.join_token)
        self._scheduler: threading.Thread | None = None
        self._interval = config.telemetry_interval or DEFAULT_TELEMETRY_INTERVAL
        self.counters = {"deploys": 0, "deletes": 0, "profiles": 0, "telemetry": 0, "bad_commands": 0}
        self._counter_lock = threading.Lock()

    def _name(self, index: int) -> str:
        profile = self.config.profile_of(index)
        per_profile = index // len(self.config.profiles) + 1
        return f"{self.config.name_prefix}-{profile}-{per_profile}"

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- start

    def start(self, timeout: float = 300.0) -> None:
        """Register every node, connect every session and start telemetry; raise TimeoutError
        (after stopping what started) when the sessions are not all up within ``timeout``."""
        started = time.monotonic()
        registrations = self._register_all()
        first = registrations[0] if registrations else None
        host = self.config.mqtt_host or (first.mqtt_host if first else "127.0.0.1")
        port = self.config.mqtt_port or (first.mqtt_port if first else 1883)
        if self.config.telemetry_interval is None and first is not None and first.telemetry_interval:
            self._interval = first.telemetry_interval
        log.info("%d virtual nodes registered in %.1f s; connecting %s to %s:%s", len(self.nodes),
                 time.monotonic() - started, self.config.mode, host, port)
        self._transport = FleetTransport(
            self.nodes, host, port, self._on_command, mode=self.config.mode,
            network_threads=self.config.network_threads, connections=self.config.connections,
            keepalive=self.config.keepalive, username=self.config.mqtt_username,
            password=self.config.mqtt_password, now=self._now)
        self._transport.start()
        self._profiler.start()
        remaining = max(1.0, timeout - (time.monotonic() - started))
        if not self._transport.wait_connected(remaining):
            connected, sessions = self._transport.connected_count(), self._transport.session_count
            self.kill()  # drops the transport: read its counts first
            raise TimeoutError(f"only {connected} of {sessions} MQTT sessions connected "
                               f"within {timeout:.0f} s")
        self._scheduler = threading.Thread(target=self._telemetry_loop, name="sim-telemetry", daemon=True)
        self._scheduler.start()
        log.info("fleet up: %d nodes, %d MQTT sessions, telemetry every %.1f s", len(self.nodes),
                 self._transport.session_count, self._interval)

    def _register_all(self) -> list[Registration]:
        def one(node: VirtualNode) -> Registration:
            node.instance_id = uuid.uuid4().hex
            body = node.registration_body(f"tcp://{DATA_HOST}:{10000 + node.index % 50000}")
            answer = register(self.config.cluster_url, body, self._stop, timeout=REGISTER_TIMEOUT,
                              join_token=self.config.join_token)
            if answer is None:
                raise RuntimeError("stopped while registering")
            node.node_id = answer.node_id
            node.mqtt_username, node.mqtt_password = answer.mqtt_username, answer.mqtt_password
            return answer

        workers = max(1, min(self.config.register_workers, len(self.nodes)))
        with ThreadPoolExecutor(workers, thread_name_prefix="sim-register") as pool:
            return list(pool.map(one, self.nodes))

    # ---------------------------------------------------------------- stop / kill

    def stop(self, timeout: float = 10.0) -> None:
        """Leave as real nodes do at shutdown: retained ``offline`` (seq of the birth), then a
        clean DISCONNECT (the broker discards the wills). Idempotent."""
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout)
        if self._transport is not None:
            transport = self._transport
            sent = [transport.publish(node, topics.status(node.node_id), encode(node.leave(self._now())),
                                      qos=1, retain=True) for node in self.nodes]
            deadline = time.monotonic() + timeout / 2
            for info in sent:  # acknowledged before the DISCONNECT (see FleetTransport.stop)
                with contextlib.suppress(RuntimeError, ValueError):  # a session that went down meanwhile
                    if info is not None:
                        info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            transport.stop(timeout / 2)
            self._transport = None
        self._profiler.stop()

    def kill(self) -> None:
        """Crash every node at once: no ``offline``, no DISCONNECT, every TCP connection reset.
        In per-node mode the broker publishes every last will; in multiplexed mode the cluster
        can only notice missed heartbeats."""
        self._stop.set()
        if self._transport is not None:
            self._transport.kill()
            self._transport = None
        if self._scheduler is not None:
            self._scheduler.join(5.0)
        self._profiler.stop()

    # ---------------------------------------------------------------- views

    @property
    def node_ids(self) -> list[str]:
        return [n.node_id for n in self.nodes]

    def connected(self) -> int:
        """MQTT sessions connected now."""
        return self._transport.connected_count() if self._transport is not None else 0

    def stages(self) -> dict[str, list[str]]:
        """Stage keys each node holds now, by node id (nodes holding none left out)."""
        return {n.node_id: keys for n in self.nodes if (keys := n.stage_keys())}

    def _count(self, name: str) -> None:
        with self._counter_lock:
            self.counters[name] += 1

    # ---------------------------------------------------------------- telemetry

    def _telemetry_loop(self) -> None:
        """Each node every interval × (1 ± jitter), first at a random phase (seeded)."""
        rng = random.Random(self.config.seed)
        start = time.monotonic()
        due = [(start + rng.uniform(0.0, self._interval), i) for i in range(len(self.nodes))]
        heapq.heapify(due)
        while due and not self._stop.is_set():
            when, index = due[0]
            delay = when - time.monotonic()
            if delay > 0:
                if self._stop.wait(min(delay, 0.5)):
                    return
                continue
            heapq.heappop(due)
            try:
                self._send_telemetry(self.nodes[index])
            except Exception:
                log.exception("telemetry of %s failed", self.nodes[index].name)
            period = self._interval * (1.0 + rng.uniform(-self.config.jitter, self.config.jitter))
            heapq.heappush(due, (max(when + period, time.monotonic() - self._interval), index))

    def _send_telemetry(self, node: VirtualNode) -> None:
        transport = self._transport
        if transport is None:
            return
        now = self._now()
        transport.publish(node, topics.information(node.node_id), encode(node.telemetry(now)))
        for stats in node.stage_stats(now):
            transport.publish(node, topics.job_resources(node.node_id), encode(stats))
        self._count("telemetry")

    # ---------------------------------------------------------------- commands (network threads)

    def _on_command(self, node: VirtualNode, suffix: str, payload: bytes) -> None:
        kinds: dict[str, type[Any]] = {"control/deploy": DeployCommand, "control/delete": DeleteCommand,
                                       "control/profile": ProfileCommand}
        kind = kinds.get(suffix)
        if kind is None:
            return
        try:
            command = decode(kind, payload)
        except PayloadError as exc:
            log.warning("%s: dropping bad %s: %s", node.name, kind.__name__, exc)
            self._count("bad_commands")
            return
        now = self._now()
        if isinstance(command, DeployCommand):
            self._report(node, [node.deploy(command, now)])
            self._count("deploys")
        elif isinstance(command, DeleteCommand):
            self._report(node, node.delete(command, now))
            self._count("deletes")
        else:
            self._profiler.submit(node.node_id, node.device_class, node.profile.speed_factor, command)
            self._count("profiles")

    def _report(self, node: VirtualNode, states: list[StageState]) -> None:
        if self._transport is None:
            return
        for state in states:
            self._transport.publish(node, topics.job(node.node_id), encode(state), qos=1)

    def _answer_profile(self, node_id: str, result: ProfileResult) -> None:
        node = next((n for n in self.nodes if n.node_id == node_id), None)
        if node is not None and self._transport is not None:
            self._transport.publish(node, topics.profile_result(node_id), encode(result), qos=1)
