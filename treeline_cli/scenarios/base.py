"""What a collaboration scenario is: a name, a line of description, the devices it needs, and
``run(stack, out, quick) -> dict``.

A scenario's stack is a root, one cluster and the node engines its :class:`StackSpec` lists (one
:class:`NodeSpec` each: profile, name, extra labels, an optional memory cap below the profile's).
:func:`add_nodes` starts them on a stack started with no node of its own; the caller then waits
for the stack (``Stack.wait_ready``) as for any other.

``run`` deploys what the scenario compares, measures it in interleaved rounds
(:func:`treeline_cli.demo.measure_interleaved`), prints ONE table on ``out`` and returns a JSON-able
dict with at least:

- ``figures``: flat ``{name: number}``; ``benchmarks.collaboration`` merges every scenario's;
- ``prediction_errors``: ``|measured p50 - predicted| / measured p50`` of each deployed plan;
- ``plans``: per alternative, the plan's explanation summary and predicted vs measured latency.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from treeline_cli.stack import Stack, node_args
from treeline_common.profiles import get_profile

RunFn = Callable[[Stack, TextIO, bool], dict[str, Any]]


@dataclass(frozen=True)
class NodeSpec:
    """One node engine of a scenario: ``name`` must be unique in the stack; ``labels`` are extra
    comma-separated labels; ``memory_limit_mb`` caps what it offers below its profile's."""

    profile: str
    name: str
    labels: str = ""
    memory_limit_mb: int | None = None

    def args(self, stack: Stack) -> list[str]:
        """Its ``python -m node_engine`` arguments on ``stack``'s first cluster."""
        cap = ["--memory-limit-mb", str(self.memory_limit_mb)] if self.memory_limit_mb else []
        return [*node_args(stack.config, stack.cluster_url, self.profile, self.name, self.labels), *cap]


@dataclass(frozen=True)
class StackSpec:
    """The devices of a scenario, in start order."""

    nodes: tuple[NodeSpec, ...]

    def validate(self) -> None:
        """ValueError naming the node when a profile is unknown or a name is used twice."""
        names = [n.name for n in self.nodes]
        for node in self.nodes:
            try:
                get_profile(node.profile)
            except ValueError as exc:
                raise ValueError(f"node {node.name}: {exc}") from None
            if names.count(node.name) > 1:
                raise ValueError(f"node name {node.name!r} is used twice")

    def describe(self) -> str:
        """``3 x edge-64, 1 x cloud``: the profiles and their counts."""
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.profile] = counts.get(node.profile, 0) + 1
        return ", ".join(f"{n} x {profile}" for profile, n in counts.items())


@dataclass(frozen=True)
class Scenario:
    """A registered scenario (see the module docstring for what ``run`` must return)."""

    name: str
    description: str
    stack: StackSpec
    run: RunFn = field(repr=False)


def add_nodes(stack: Stack, spec: StackSpec) -> None:
    """Start every node of ``spec`` in ``stack``'s first cluster (nothing waits here)."""
    spec.validate()
    for node in spec.nodes:
        stack.spawn(f"node-{node.name}", node.args(stack), env=stack.node_env(1))
        stack.node_clusters[node.name] = 1


def node_names(spec: StackSpec, label: str) -> list[str]:
    """Names of the nodes whose profile or extra labels carry ``label``."""
    return [n.name for n in spec.nodes
            if label in get_profile(n.profile).labels or label in n.labels.split(",")]


def merge_figures(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Every scenario's ``figures`` in one dict (a name two scenarios report: ValueError)."""
    merged: dict[str, Any] = {}
    for name, result in results.items():
        for key, value in (result.get("figures") or {}).items():
            if key in merged:
                raise ValueError(f"scenario {name} reports {key!r}, which another scenario reports too")
            merged[key] = value
    return merged
