"""Scheduler profiles: the plugin weights the placement scorer combines, kept as data.

A profile is configuration, not code, so operators can tune placement without a release and
the weights are never magic numbers inside a scorer. The contract checked here: ``weights``
maps plugin names to non-negative numbers that sum to 1 (within 1e-6), so a combined score
stays on the plugins' own 0-100 scale.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

from treeline_common.errors import InvalidInput, NotFound

STRATEGIES = ("optimal", "flops-balanced", "amp4ec-greedy")


@dataclass(frozen=True)
class SchedulerProfile:
    """Plugin weights plus the partitioning strategy.

    ``strategy``: ``optimal`` (the exact planner, the default), or one of the baselines it is
    measured against: ``flops-balanced`` (the walking skeleton's splitter) and
    ``amp4ec-greedy``. ``shortlist_size``: how many top-scored nodes the exact planner
    considers.
    """

    name: str
    weights: Mapping[str, float]
    comment: str = ""
    strategy: str = "optimal"
    shortlist_size: int = 8


def profile_from_dict(doc: Any) -> SchedulerProfile:
    """Check and view a profile document; ``InvalidInput`` with ``{path, message}`` details."""
    problems: list[dict[str, str]] = []
    if not isinstance(doc, Mapping):
        raise InvalidInput("invalid scheduler profile", [{"path": "", "message": "must be an object"}])
    if not isinstance(doc.get("name"), str) or not doc["name"]:
        problems.append({"path": "name", "message": "must be a non-empty string"})
    raw_weights = doc.get("weights")
    weights: Mapping[str, Any] = raw_weights if isinstance(raw_weights, Mapping) else {}
    if not weights:
        problems.append({"path": "weights", "message": "must be a non-empty object of plugin: weight"})
    else:
        for plugin, weight in sorted(weights.items()):
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
                problems.append({"path": f"weights.{plugin}",
                                 "message": f"must be a number >= 0, got {weight!r}"})
        if not problems and not math.isclose(sum(weights.values()), 1.0, abs_tol=1e-6):
            problems.append({"path": "weights", "message": f"must sum to 1, got {sum(weights.values()):g}"})
    strategy = doc.get("strategy", "optimal")
    if strategy not in STRATEGIES:
        problems.append({"path": "strategy",
                         "message": f"must be one of {list(STRATEGIES)}, got {strategy!r}"})
    shortlist = doc.get("shortlist_size", 8)
    if isinstance(shortlist, bool) or not isinstance(shortlist, int) or not 1 <= shortlist <= 16:
        problems.append({"path": "shortlist_size",
                         "message": f"must be an integer in 1..16, got {shortlist!r}"})
    if problems:
        raise InvalidInput("invalid scheduler profile", problems)
    return SchedulerProfile(name=doc["name"], comment=str(doc.get("comment", "")),
                            weights=MappingProxyType({k: float(v) for k, v in weights.items()}),
                            strategy=strategy, shortlist_size=shortlist)


def load_profile(name: str = "default") -> SchedulerProfile:
    """A profile shipped in ``deployment_descriptors/profiles/<name>.json``; ``NotFound`` lists the
    known ones."""
    folder = resources.files(__package__).joinpath("profiles")
    known = sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))
    if name not in known:
        raise NotFound(f"unknown scheduler profile {name!r}; known: {', '.join(known)}")
    return profile_from_dict(json.loads(folder.joinpath(f"{name}.json").read_text(encoding="utf-8")))
