"""The stages a node serves: a thread-safe table from stage key to loaded partition.

The command handler writes the table (deploy/delete, on its worker thread) and the data
plane reads it (on its poll and worker threads), so every access goes through one lock
and entries are immutable: a re-deploy with a new ``next`` replaces the entry while the
per-stage counters carry over. :class:`StageRunner` runs one stage with timing, emulated
slowdown and statistics, the single place where a partition is executed.

A *relay* stage (``DeployCommand.relay``) has no model: it hands its inputs on unchanged.
It exists so a request can enter on the node where the data is when the first partition
runs elsewhere; shipping the raw input then costs that node's (emulated) uplink, which is
exactly what the planner charged for the placement.

Boundary compression (:mod:`treeline_common.tensor_codec`): a stage whose route names a codec
(``next.compression``, set by the cluster only on a route to another node) sends its float32
outputs compressed: :meth:`LoadedStage.select_outputs` encodes them, so the data plane's
emulated uplink is charged on the compressed bytes. :meth:`StageRunner.run` decodes compressed
inputs before a partition runs; a relay stage hands them on untouched. Co-located stages are
routed without a codec, so their arrays are still handed over without a copy.

Canary split (:mod:`cluster_orchestrator.rollout`): a relay command with ``divert_from`` makes
a *router* stage that takes ``divert_share`` of the requests addressed to the serving entry
(``divert_from``, on this node) and hands them, unchanged, to the new version's entry.
:meth:`StageTable.get` makes the choice, so callers keep addressing the entry they know and
the data plane needs no change: the router it gets back is a pass-through stage with the
entry's access rules and the new generation's route. The router is not ``relay`` (its share
runs on a worker, never on the poll thread), and removing it ends the split at once.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from node_engine.data_plane.security import OPEN, StageAccess
from node_engine.emulation import Emulator
from treeline_common import tensor_codec
from treeline_common.cascade import Escalation
from treeline_common.clock import Clock, SystemClock
from treeline_common.messages import DeployCommand, NextStage, stage_key


class Session(Protocol):
    """What the data plane needs from a loaded partition (see :mod:`node_engine.runtime`)."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass
class StageCounters:
    """Requests served and compute time of one stage; shared across re-deploys. At a service's
    entry also the end-to-end time of each request it answered: from its arrival here to its
    answer leaving here, every later stage and link included (``add_end_to_end``)."""

    requests: int = 0
    compute_ms_total: float = 0.0
    e2e_requests: int = 0
    e2e_ms_total: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, compute_ms: float) -> None:
        with self.lock:
            self.requests += 1
            self.compute_ms_total += compute_ms

    def add_end_to_end(self, ms: float) -> None:
        with self.lock:
            self.e2e_requests += 1
            self.e2e_ms_total += ms

    def end_to_end(self) -> tuple[int, float]:
        """``(requests answered as the entry, their mean end-to-end ms)``."""
        with self.lock:
            return self.e2e_requests, self.e2e_ms_total / self.e2e_requests if self.e2e_requests else 0.0

    def snapshot(self) -> tuple[int, float]:
        """``(requests, mean compute ms)``."""
        with self.lock:
            mean = self.compute_ms_total / self.requests if self.requests else 0.0
            return self.requests, mean


@dataclass(frozen=True)
class LoadedStage:
    key: str
    deployment_id: str
    index: int
    sha256: str
    generation: int
    session: Session
    next: NextStage | None
    path: Path | None = None
    load_ms: float = 0.0
    counters: StageCounters = field(default_factory=StageCounters)
    outputs: tuple[str, ...] = ()  # what the plan says this stage sends on; () = the session's outputs
    relay: bool = False  # no model: the inputs are the outputs (session is RELAY_SESSION)
    access: StageAccess = OPEN  # who may send here, and the key forwards are signed with
    memory_bytes: int = 0  # what the stage is charged against the node's memory limit (node_engine.refusals)
    diverts: str = ""  # a canary router: the stage key whose requests it takes a share of
    share: float = 0.0  # the share (0..1) of ``diverts``' requests this router takes
    cascade: Escalation | None = None  # a cascade's edge stage (node_engine.data_plane.cascade)

    def select_outputs(self, inputs: Mapping[str, np.ndarray],
                       produced: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The tensors this stage sends on: the declared outputs, in declared order, in wire form.

        A declared name the partition does not produce is passed through from the stage's
        inputs: a skip connection that crosses this stage (produced before it, consumed
        after it) must travel on with the activations, compressed or not as it came.
        ValueError if it is in neither. Wire form: compressed with ``next.compression`` when
        the route names a codec; decoded for the caller when this is the last stage.
        """
        if not self.outputs:
            selected = dict(produced)
        else:
            selected = {}
            for name in self.outputs:
                carried = ({name: produced[name]} if name in produced
                           else tensor_codec.entries_for(inputs, name))
                if carried is None:
                    raise ValueError(f"stage {self.key} must send {name!r} but neither computes nor "
                                     "receives it")
                selected.update(carried)
        if self.next is None:
            return tensor_codec.decode(selected)
        if self.next.compression:
            return tensor_codec.encode(selected, self.next.compression)
        return selected

    def with_route(self, next_stage: NextStage | None, generation: int,
                   access: StageAccess | None = None) -> LoadedStage:
        """A copy routed to ``next_stage`` (and with ``access``, if given). The key is not
        recomputed: callers pass the generation the key already names (a new generation is
        a new stage, not a re-route)."""
        return dataclasses.replace(self, next=next_stage, generation=generation,
                                   access=self.access if access is None else access)

    def selected_by(self, deployment_id: str, stage: int | None, generation: int | None) -> bool:
        """Whether a delete of ``(deployment_id, stage, generation)`` covers this stage.

        ``None`` matches any value: the selection rule of :class:`DeleteCommand`.
        """
        return (self.deployment_id == deployment_id
                and (stage is None or self.index == stage)
                and (generation is None or self.generation == generation))


class _RelaySession:
    """The session of a relay stage: nothing to load, nothing to free, inputs pass through.

    A null object rather than ``session=None`` so every holder of a :class:`LoadedStage`
    (unload on delete, shutdown) can keep calling ``session.close()`` without a special case.
    """

    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(inputs)

    def close(self) -> None:
        pass


RELAY_SESSION: Session = _RelaySession()


def relay_stage(cmd: DeployCommand, counters: StageCounters | None = None) -> LoadedStage:
    """The stage a ``relay=True`` deploy command asks for (no artifact, no session).

    It sends on the declared outputs (or, when none are declared, the declared inputs), so
    a request carrying extra tensors does not leak them downstream; with neither declared
    it forwards everything it received.
    """
    router = bool(cmd.divert_from)
    return LoadedStage(
        key=stage_key(cmd.deployment_id, cmd.stage, cmd.generation),
        deployment_id=cmd.deployment_id,
        index=cmd.stage,
        sha256=cmd.sha256.lower(),
        generation=cmd.generation,
        session=RELAY_SESSION,
        next=cmd.next,
        counters=counters if counters is not None else StageCounters(),
        outputs=tuple(cmd.outputs or cmd.inputs),
        relay=not router,  # a router's share runs on a worker (module docstring)
        access=StageAccess.from_command(cmd),
        diverts=cmd.divert_from,
        share=cmd.divert_share if router else 0.0,
    )


class StageTable:
    """Stage key -> :class:`LoadedStage`. All methods are thread-safe.

    The key is ``stage_key(deployment_id, index, generation)``, so several generations of
    one deployment's stage live side by side; :meth:`keys` is what the node reports as the
    stages it serves.

    Canary routers (module docstring): ``get`` of a key a router diverts returns the router
    for a share of the calls, drawn from a generator seeded with ``seed`` (deterministic for
    one sequence of calls; every call draws, so the share holds whichever call decides).
    """

    def __init__(self, seed: int = 0) -> None:
        self._stages: dict[str, LoadedStage] = {}
        self._routers: dict[str, str] = {}  # diverted stage key -> router stage key
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def get(self, key: str) -> LoadedStage | None:
        with self._lock:
            stage = self._stages.get(key)
            router_key = self._routers.get(key)
            if router_key is None or stage is None:
                return stage
            router = self._stages.get(router_key)
            if router is not None and self._rng.random() < router.share:
                return router
            return stage

    def put(self, stage: LoadedStage) -> LoadedStage | None:
        """Insert or replace; return the entry it replaced (the caller closes its session)."""
        with self._lock:
            previous = self._stages.get(stage.key)
            self._stages[stage.key] = stage
            if stage.diverts:
                self._routers[stage.diverts] = stage.key
            return previous

    def _drop_routes(self, removed: list[str]) -> None:
        """Forget the splits of removed routers (call with the lock held)."""
        for diverted, router_key in list(self._routers.items()):
            if router_key in removed:
                del self._routers[diverted]

    def remove(self, key: str) -> LoadedStage | None:
        with self._lock:
            self._drop_routes([key])
            return self._stages.pop(key, None)

    def remove_deployment(self, deployment_id: str) -> list[LoadedStage]:
        """Remove every stage of ``deployment_id``, in every generation."""
        return self.remove_matching(deployment_id)

    def remove_matching(self, deployment_id: str, *, stage: int | None = None,
                        generation: int | None = None) -> list[LoadedStage]:
        """Remove and return (sorted by key) the stages :meth:`LoadedStage.selected_by` selects.

        Atomic: a stage deployed concurrently is either removed or left whole.
        """
        with self._lock:
            keys = sorted(key for key, entry in self._stages.items()
                          if entry.selected_by(deployment_id, stage, generation))
            self._drop_routes(keys)
            return [self._stages.pop(k) for k in keys]

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._stages)

    def all(self) -> list[LoadedStage]:
        with self._lock:
            return [self._stages[k] for k in sorted(self._stages)]

    def memory_bytes(self, excluding: str | None = None) -> tuple[int, int]:
        """``(bytes charged, stages counted)`` over every stage but the one keyed ``excluding``."""
        with self._lock:
            charged = [s.memory_bytes for k, s in self._stages.items() if k != excluding]
            return sum(charged), len(charged)

    def clear(self) -> list[LoadedStage]:
        with self._lock:
            stages = list(self._stages.values())
            self._stages.clear()
            self._routers.clear()
            return stages


class StageRunner:
    """Runs one stage: real compute, then the profile's emulated slowdown, then counters.

    ``compute_ms`` is what the (emulated) device took: the real compute plus the wait, so
    the timings a caller sees are those of the device being emulated.

    A relay stage computes nothing, so it is neither timed nor slowed down: it reports
    0 ms and only counts the request. Compressed inputs (:mod:`treeline_common.tensor_codec`)
    are decoded before a partition runs (the decode is part of the stage's compute time);
    a relay passes them on untouched. A malformed compressed tensor raises CodecError.
    """

    def __init__(self, emulator: Emulator | None = None, clock: Clock | None = None) -> None:
        self._emulator = emulator or Emulator(1.0)
        self._clock = clock or SystemClock()

    def link_delay_ms(self, payload_bytes: int) -> float:
        """Emulated uplink ms before ``payload_bytes`` may leave for another node (0 if native)."""
        return self._emulator.link_delay_ms(payload_bytes)

    def run(self, stage: LoadedStage,
            inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        if stage.relay:
            stage.counters.add(0.0)
            return dict(inputs), 0.0
        start = self._clock.monotonic()
        outputs = stage.session.run(tensor_codec.decode(inputs))
        self._emulator.slow_down(self._clock.monotonic() - start)
        compute_ms = (self._clock.monotonic() - start) * 1000.0
        stage.counters.add(compute_ms)
        return outputs, compute_ms
