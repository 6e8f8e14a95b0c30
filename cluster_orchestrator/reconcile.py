"""The cluster's reconcile rule: desired deployments vs observed nodes -> actions (pure).

Level-triggered, as Kubernetes controllers and Ray Serve's controller are: the function
looks only at the state it is given, never at the event that woke it, so whatever state
it finds (after a crash, a restart, a lost or duplicated message) it steers back towards
the desired state. The orchestrator runs it on every event and on a timer, and carries
out the actions; the same state always yields the same actions.

Rules, per deployment (``DesiredDeployment``) and node (``ObservedNode``):

1. **Plan** (start a deployment worker) when no worker runs for it and
   - it is REQUESTED / SCHEDULED / DEPLOYING / DEGRADED and its retry time has come
     (after a cluster restart this resumes whatever was in progress);
   - it is RUNNING and a node of its placement is offline (repair);
   - it is FAILED as unschedulable and a node is online now that was not when it failed
     (capacity returned: a node joined or came back);
   - it is RUNNING and a node is online that the last plan did not consider (a join:
     an *improvement* re-plan, adopted only when predicted better by the margin), or its
     measured stage times drifted from the plan for longer than the drift window.
2. **Redeploy** a stage of a RUNNING placement whose node is online but whose telemetry,
   newer than the placement, does not list the stage (the node restarted and lost it).
   At most once per ``resend_interval`` per stage.
3. **Delete** every stage a node reports that no desired placement holds: stages of
   deleted, failed and unknown deployments, and of superseded generations (this is also
   how the old pipeline goes after a make-before-break switch, once it has drained for
   ``drain`` seconds so callers can move to the new entry). "FAILED but still serving"
   cannot persist.
4. **Rollouts** (:mod:`.rollout`): a canary's router stage is desired while the deployment
   document holds it; a RUNNING deployment that holds one with no worker running (the cluster
   restarted mid-canary) is planned again, which starts the canary afresh; one whose last new
   model version was rolled back is not re-planned for a join or drift. A repair or a moved
   node still re-plans it, and the worker then plans the version that serves, never the refused
   one (:func:`.deployments.serving_job`).

While ``Observed.plans_held`` is set (nodes are still leaving: a mass last will, see
:class:`~.liveness.DepartureHold`) no Plan is emitted at all: the deployments a departure
touches are re-planned once the departures have settled, on the final state, instead of
once per departing node. Redeploys and deletes are still emitted (they only address online
nodes); the orchestrator does not even run the rule while a hold lasts.

Nothing here does I/O or reads a clock: ``now`` is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from treeline_common.jobs import IN_PROGRESS, JobStatus, Placement
from treeline_common.messages import DeleteCommand, parse_stage_key

DEFAULT_RESEND_INTERVAL = 5.0  # s between re-sends of one missing stage
TELEMETRY_GRACE = 1.0  # s after a placement went live before a node's silence about a stage counts


@dataclass(frozen=True)
class DesiredDeployment:
    """What the cluster wants for one deployment, read from its store document.

    ``placement`` is the serving plan; ``pending`` the generation being brought up (make-
    before-break). ``considered`` are the node ids the last plan saw online; ``failed_capacity``
    the online node ids when it went FAILED as unschedulable (None if it failed otherwise).
    ``drift_since``: since when measured stage times disagree with the plan (None: they agree).
    """

    deployment_id: str
    status: JobStatus
    placement: Placement | None = None
    pending: Placement | None = None
    retry_at: float | None = None
    placed_at: float = 0.0
    considered: frozenset[str] = frozenset()
    failed_capacity: frozenset[str] | None = None
    drift_since: float | None = None
    router: tuple[str, str] | None = None  # (node_id, stage key) of a canary router (rollout)
    rolled_back: bool = False  # the job's model was refused by its canary: serving the previous one


@dataclass(frozen=True)
class ObservedNode:
    """A node as last observed: liveness, the stage keys its telemetry lists, and when."""

    node_id: str
    online: bool
    stages: frozenset[str] = frozenset()
    telemetry_at: float | None = None
    name: str = ""  # for messages people read
    endpoint: str = ""  # its data-plane address now ("" unknown); a restart may change it


@dataclass(frozen=True)
class Observed:
    """Everything the rule looks at besides the desired state."""

    nodes: Mapping[str, ObservedNode]
    workers: frozenset[str] = frozenset()  # deployment ids with a worker running now
    resent_at: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (node_id, key) -> time
    plans_held: bool = False  # nodes are still leaving: start no worker yet (module docstring)


@dataclass(frozen=True)
class Plan:
    """Start a worker for ``deployment_id``. ``improve``: keep serving unless predicted better."""

    deployment_id: str
    cause: str
    improve: bool = False


@dataclass(frozen=True)
class Redeploy:
    """Re-send the deploy command of one stage (``stage`` index, -1 = relay) to its node."""

    node_id: str
    deployment_id: str
    generation: int
    stage: int
    stage_key: str


@dataclass(frozen=True)
class Delete:
    """Send ``command`` to ``node_id`` (a stage no desired placement holds)."""

    node_id: str
    command: DeleteCommand
    reason: str

    @property
    def deployment_id(self) -> str:
        """The deployment the stage belonged to (every action names one: its logs carry it)."""
        return self.command.deployment_id


Action = Plan | Redeploy | Delete


@dataclass(frozen=True)
class Settings:
    """Tunables of the rule (defaults: the issue's 30 s drift window)."""

    resend_interval: float = DEFAULT_RESEND_INTERVAL
    drift_window: float = 30.0
    telemetry_grace: float = TELEMETRY_GRACE
    drain: float = 3.0  # s an old generation keeps serving after the switch (callers re-resolve)


def reconcile(desired: Mapping[str, DesiredDeployment], observed: Observed, now: float,
              settings: Settings = Settings()) -> list[Action]:
    """The actions that move the observed state towards ``desired`` (see the module rules).

    Deterministic: deployments and nodes are visited in sorted order.
    """
    actions: list[Action] = []
    online = frozenset(n.node_id for n in observed.nodes.values() if n.online)
    names = {n.node_id: n.name or n.node_id for n in observed.nodes.values()}
    for deployment_id in sorted(desired):
        want = desired[deployment_id]
        if deployment_id in observed.workers:
            continue
        plan = _plan_action(want, online, now, settings, names) or _moved(want, observed)
        if plan is not None:
            if not observed.plans_held:
                actions.append(plan)
        elif want.status is JobStatus.RUNNING and want.placement is not None:
            actions.extend(_redeploys(want, want.placement, observed, now, settings))
    actions.extend(_orphans(desired, observed, now, settings))
    return actions


_RESUME_CAUSES = {JobStatus.REQUESTED: "new deployment", JobStatus.SCHEDULED: "resumed after a restart",
                  JobStatus.DEPLOYING: "resumed after a restart", JobStatus.DEGRADED: "repair"}


def _plan_action(want: DesiredDeployment, online: frozenset[str], now: float,
                 settings: Settings, names: Mapping[str, str] | None = None) -> Plan | None:
    status = want.status

    def named(ids: list[str]) -> str:
        return ", ".join((names or {}).get(i, i) for i in ids)

    if status in IN_PROGRESS:
        if want.retry_at is None or now >= want.retry_at:
            cause = "retry" if want.retry_at is not None else _RESUME_CAUSES.get(status, status.value)
            return Plan(want.deployment_id, cause)
        return None
    if status is JobStatus.FAILED:
        if want.failed_capacity is None:
            return None
        returned = sorted(online - want.failed_capacity)
        if returned:
            return Plan(want.deployment_id, f"capacity returned: {named(returned)} online")
        return None
    if status is not JobStatus.RUNNING or want.placement is None:
        return None
    lost = sorted(want.placement.node_ids() - online)
    if lost:
        return Plan(want.deployment_id, f"node {named(lost)} offline")
    if want.router is not None:
        return Plan(want.deployment_id, "a rollout was interrupted: starting its canary again")
    if want.retry_at is not None and now < want.retry_at:
        return None  # an improvement attempt failed recently: back off
    if want.rolled_back:
        return None  # re-planning would bring back the version its canary refused
    joined = sorted(online - want.considered)
    if joined:
        return Plan(want.deployment_id, f"node {named(joined)} joined", improve=True)
    if want.drift_since is not None and now - want.drift_since >= settings.drift_window:
        return Plan(want.deployment_id, f"measured stage times drifted from the plan for "
                                        f"{now - want.drift_since:.0f} s", improve=True)
    return None


def _moved(want: DesiredDeployment, observed: Observed) -> Plan | None:
    """A RUNNING placement whose stage names an address its node no longer serves (the node
    restarted on another port): the routes between its stages are wrong, so it is re-planned."""
    if want.status is not JobStatus.RUNNING or want.placement is None:
        return None
    moved = sorted({s.node_id for s in want.placement.all_stages()
                    if (node := observed.nodes.get(s.node_id)) is not None and node.endpoint
                    and node.endpoint != s.endpoint})
    if not moved:
        return None
    names = ", ".join(observed.nodes[n].name or n for n in moved)
    return Plan(want.deployment_id, f"node {names} serves at a new address")


def _redeploys(want: DesiredDeployment, placement: Placement, observed: Observed, now: float,
               settings: Settings) -> list[Redeploy]:
    actions = []
    for stage in placement.all_stages():
        node = observed.nodes.get(stage.node_id)
        if node is None or not node.online or stage.stage_key in node.stages:
            continue
        if node.telemetry_at is None or node.telemetry_at < want.placed_at + settings.telemetry_grace:
            continue  # no telemetry since the placement went live: nothing is known to be missing
        last = observed.resent_at.get((stage.node_id, stage.stage_key))
        if last is not None and now - last < settings.resend_interval:
            continue
        actions.append(Redeploy(stage.node_id, want.deployment_id, placement.generation, stage.index,
                                stage.stage_key))
    return actions


def wanted_keys(want: DesiredDeployment) -> frozenset[tuple[str, str]]:
    """(node_id, stage key) pairs the deployment's desired placements hold."""
    if want.status in (JobStatus.FAILED, JobStatus.DELETED):
        return frozenset()
    keys: set[tuple[str, str]] = set()
    for placement in (want.placement, want.pending):
        if placement is not None:
            keys.update((s.node_id, s.stage_key) for s in placement.all_stages())
    if want.router is not None:
        keys.add(want.router)
    return frozenset(keys)


def _orphans(desired: Mapping[str, DesiredDeployment], observed: Observed, now: float,
             settings: Settings) -> list[Delete]:
    wanted: dict[str, frozenset[tuple[str, str]]] = {d: wanted_keys(w) for d, w in desired.items()}
    actions = []
    for node_id in sorted(observed.nodes):
        node = observed.nodes[node_id]
        if not node.online:
            continue
        for key in sorted(node.stages):
            try:
                deployment_id, generation, stage = parse_stage_key(key)
            except ValueError:
                continue
            want = desired.get(deployment_id)
            if want is not None and deployment_id in observed.workers \
                    and want.status is not JobStatus.DELETED:
                newest = max((p.generation for p in (want.placement, want.pending) if p is not None),
                             default=0)
                if generation > newest:
                    continue  # a worker is bringing this generation up right now
            if (node_id, key) in wanted.get(deployment_id, frozenset()):
                continue
            if want is not None and want.placement is not None and want.status is JobStatus.RUNNING \
                    and generation < want.placement.generation and now < want.placed_at + settings.drain:
                continue  # the old pipeline drains while callers move to the new entry
            if want is None:
                reason = "unknown deployment"
            elif want.status in (JobStatus.FAILED, JobStatus.DELETED):
                reason = f"deployment is {want.status.value}"
            else:
                reason = f"generation {generation} is not desired"
            actions.append(Delete(node_id, DeleteCommand(deployment_id, stage, generation), reason))
    return actions
