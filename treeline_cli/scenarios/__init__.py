"""Where edge-cloud collaboration wins: ``treeline demo --scenario NAME``.

Each scenario (:class:`~.base.Scenario`) names the devices it needs, deploys the alternatives
a user would really pick, measures them in interleaved rounds and prints one table; its figures
go to ``<data dir>/scenarios/<name>.json`` and into ``python -m benchmarks.collaboration``.

To add one: a module here with a ``SCENARIO`` (see :mod:`.base` for what ``run`` returns), and
its entry in ``REGISTERED`` below.
"""

from __future__ import annotations

from treeline_cli.scenarios import battery, camera, cascade, throughput, too_big
from treeline_cli.scenarios.base import NodeSpec, Scenario, StackSpec

REGISTERED: tuple[Scenario, ...] = (
    too_big.SCENARIO,
    throughput.SCENARIO,
    camera.SCENARIO,
    cascade.SCENARIO,
    battery.SCENARIO,
)
SCENARIOS: dict[str, Scenario] = {s.name: s for s in REGISTERED}
ALL = "all"


def select(names: str) -> list[Scenario]:
    """The scenarios of a comma-separated list (``all``: every one, in registration order).

    ValueError naming the unknown name and listing the known ones.
    """
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted:
        raise ValueError(f"no scenario named; known: {', '.join([*SCENARIOS, ALL])}")
    if ALL in wanted:
        return list(REGISTERED)
    unknown = [n for n in wanted if n not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario {unknown[0]!r}; known: {', '.join([*SCENARIOS, ALL])}")
    return [SCENARIOS[n] for n in dict.fromkeys(wanted)]


__all__ = ["ALL", "REGISTERED", "SCENARIOS", "NodeSpec", "Scenario", "StackSpec", "select"]
