"""Which clusters may take an ML microservice, and in which order to ask them (pure).

The root's first stage of cluster choice, in the Kubernetes scheduler framework's terms a
*filter* then a coarse *score* over each cluster's pushed aggregate
(:func:`cluster_orchestrator.aggregate.compute_aggregate`); the second stage, asking the best
few for a dry-run plan and taking the lowest predicted cost, is :mod:`.cluster_choice`.

Filters, each with a named reason (Oakestra's SLA v2.0 constraint types, ``../shared/design/
research/oakestra.md``): the cluster is active; ``clusters`` (``allowed`` names) and
``direct`` (``cluster`` name) constraints; the microservice's ``arch`` list (any online node of
one of them; ``amd64`` = ``x86_64``, ``arm64`` = ``aarch64``); ``vgpus`` > 0 and ``addons``
``needs`` name accelerator kinds some online node must have; memory: the model's weights must fit
the cluster's *total* free memory when the SLA lets the scheduler split it
(``max_partitions`` > 1), else its *largest* free node (a whole model runs on one node). A
cluster that never pushed an aggregate, or whose nodes are not online yet, is kept and ranked
last: it may have just registered, and a job it takes waits there for capacity (the cluster
places it when nodes join) rather than being refused.

Score: fastest device (``best_speed_factor``), then online nodes, then total free memory,
then name (deterministic).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from root_orchestrator.ranking import is_active, last_seen
from treeline_common.arch import normal_arch

REASON_INACTIVE = "inactive"
REASON_NOT_ALLOWED = "not_allowed"
REASON_ARCH = "arch"
REASON_ACCELERATOR = "accelerator"
REASON_MEMORY = "memory"
REASON_EXCLUDED = "excluded"


@dataclass(frozen=True)
class ClusterNeeds:
    """What one ML microservice asks of a cluster.

    ``allowed``: cluster names it may run on (None = any); ``architectures``: normalised CPU
    architectures, any of which will do (empty = any); ``accelerators``: kinds some online node
    must offer; ``model_mb``: weights in MiB; ``split``: whether the scheduler may cut the model
    (then total free memory counts, else the largest node's).
    """

    allowed: frozenset[str] | None = None
    architectures: tuple[str, ...] = ()
    accelerators: tuple[str, ...] = ()
    model_mb: float = 0.0
    split: bool = False

    @property
    def pinned(self) -> bool:
        """A ``clusters``/``direct`` constraint names the clusters: failover may not leave them."""
        return self.allowed is not None


def needs_of(microservice: Mapping[str, Any], model_bytes: int = 0) -> ClusterNeeds:
    """The :class:`ClusterNeeds` of a (validated) SLA microservice dict and its model's size."""
    allowed: set[str] | None = None
    for constraint in microservice.get("constraints") or ():
        if not isinstance(constraint, Mapping):
            continue
        names: set[str] | None = None
        if constraint.get("type") == "clusters":
            names = {str(n) for n in constraint.get("allowed") or ()}
        elif constraint.get("type") == "direct" and constraint.get("cluster"):
            names = {n.strip() for n in str(constraint["cluster"]).split(";") if n.strip()}
        if names is not None:
            allowed = names if allowed is None else allowed & names
    accelerators = ["gpu"] if int(microservice.get("vgpus") or 0) > 0 else []
    for constraint in microservice.get("constraints") or ():
        if isinstance(constraint, Mapping) and constraint.get("type") == "addons":
            accelerators += [str(n).lower() for n in constraint.get("needs") or ()]
    model = microservice.get("model") if isinstance(microservice.get("model"), Mapping) else {}
    return ClusterNeeds(
        allowed=frozenset(allowed) if allowed is not None else None,
        architectures=tuple(dict.fromkeys(normal_arch(str(a)) for a in microservice.get("arch") or ())),
        accelerators=tuple(dict.fromkeys(accelerators)),
        model_mb=model_bytes / 2**20,
        split=int((model or {}).get("max_partitions") or 1) > 1,
    )


def _number(aggregate: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = aggregate.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def reject_reason(cluster: Mapping[str, Any], needs: ClusterNeeds) -> str | None:
    """Why ``cluster`` (a stored cluster doc with its last ``aggregate``) cannot take the
    microservice, as ``"<reason>: <detail>"``; None when it passes every filter. Activity is
    checked by :func:`filter_clusters`."""
    name = str(cluster.get("cluster_name", ""))
    if needs.allowed is not None and name not in needs.allowed:
        return f"{REASON_NOT_ALLOWED}: the SLA allows only {sorted(needs.allowed)}"
    aggregate = cluster.get("aggregate")
    if not _reports_nodes(aggregate):
        return None  # never pushed, or no node online yet: kept, ranked last
    assert isinstance(aggregate, Mapping)
    archs = aggregate.get("architectures")
    if needs.architectures and isinstance(archs, Mapping):
        have = {normal_arch(str(a)) for a, n in archs.items() if n}
        if not have & set(needs.architectures):
            return f"{REASON_ARCH}: needs one of {list(needs.architectures)}, has {sorted(have)}"
    kinds = aggregate.get("accelerator_kinds")
    if needs.accelerators:
        have_kinds = {str(k).lower() for k, n in kinds.items() if n} if isinstance(kinds, Mapping) else (
            {"gpu"} if (_number(aggregate, "gpus") or 0) > 0 else set())
        missing = [k for k in needs.accelerators if k not in have_kinds]
        if missing:
            return f"{REASON_ACCELERATOR}: no online node offers {missing}"
    if needs.model_mb > 0:
        if needs.split:
            free = _number(aggregate, "memory_total_free_mb", "memory")
            what = "total free memory"
        else:
            free = _number(aggregate, "memory_largest_free_mb", "max_memory_limit_mb")
            what = "largest node's free memory"
        if free is not None and free < needs.model_mb:
            return (f"{REASON_MEMORY}: the model's weights need {needs.model_mb:.1f} MB, "
                    f"{what} is {free:.0f} MB")
    return None


def _reports_nodes(aggregate: Any) -> bool:
    """Whether an aggregate says something about online nodes (pushed, and some are online)."""
    if not isinstance(aggregate, Mapping) or not aggregate:
        return False
    nodes = _number(aggregate, "active_nodes", "online_nodes")
    return nodes is None or nodes > 0


def _score(cluster: Mapping[str, Any]) -> tuple[float, float, float, float, str]:
    raw = cluster.get("aggregate")
    aggregate: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    pushed = 0.0 if _reports_nodes(aggregate) else 1.0
    return (pushed, -(_number(aggregate, "best_speed_factor") or 0.0),
            -(_number(aggregate, "active_nodes", "online_nodes") or 0.0),
            -(_number(aggregate, "memory_total_free_mb", "memory", "free_memory_mb") or 0.0),
            str(cluster.get("cluster_name", "")))


def filter_clusters(clusters: Iterable[Mapping[str, Any]], needs: ClusterNeeds, now: float, window_s: float,
                    exclude: Iterable[str] = ()) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """``(candidates best first, {cluster_name: reason})`` for every cluster; ``exclude`` names
    cluster ids left out (e.g. the one a deployment is failing over from)."""
    excluded = set(exclude)
    candidates: list[dict[str, Any]] = []
    rejected: dict[str, str] = {}
    for cluster in clusters:
        name = str(cluster.get("cluster_name", ""))
        if cluster.get("cluster_id") in excluded:
            rejected[name] = f"{REASON_EXCLUDED}: the deployment is moving away from it"
        elif not is_active(cluster, now, window_s):
            rejected[name] = f"{REASON_INACTIVE}: last seen {now - last_seen(cluster):.0f} s ago"
        elif (reason := reject_reason(cluster, needs)) is not None:
            rejected[name] = reason
        else:
            candidates.append(dict(cluster))
    return sorted(candidates, key=_score), rejected
