"""Treeline's built-in scheduler plugins and their registry.

``PLUGINS`` maps each plugin name to its factory. Filter names: ``privacy_pin``,
``node_online``, ``node_compute``, ``direct``, ``node_arch``, ``runtime``, ``accelerator``,
``node_memory``, ``battery_level``, ``energy_budget`` (applied in that order). Score names,
which are also the weight keys of a scheduler profile: ``compute``, ``memory``, ``battery``,
``link``, ``load``, ``energy``.
"""

from __future__ import annotations

from ml_scheduler.framework.registry import Registry
from ml_scheduler.plugins.filters import FILTERS
from ml_scheduler.plugins.scores import SCORES

PLUGINS = Registry.of(*FILTERS, *SCORES)
FILTER_NAMES: tuple[str, ...] = tuple(cls.name for cls in FILTERS)
SCORE_NAMES: tuple[str, ...] = tuple(cls.name for cls in SCORES)

__all__ = ["FILTER_NAMES", "PLUGINS", "SCORE_NAMES"]
