"""Node simulator: thousands of virtual node engines in one process (issue 9, "Scale, measured").

Each virtual node registers with a real cluster orchestrator over its REST API and speaks the
real MQTT contract (:mod:`treeline_common.messages`) to a real broker; it holds the stages it
is told to deploy without running them. See :mod:`.fleet` for what is real and what is not,
:mod:`.transport` for the per-node and multiplexed modes.
"""

from node_engine.simulator.config import FleetConfig
from node_engine.simulator.fleet import Fleet
from node_engine.simulator.transport import MULTIPLEXED, PER_NODE

__all__ = ["MULTIPLEXED", "PER_NODE", "Fleet", "FleetConfig"]
