"""A registry of named plugin factories (kube-scheduler's ``runtime.Registry``).

Why factories and names: profiles are data (``deployment_descriptors/profiles/*.json``), so
plugins are looked up by name; an unknown name must fail when the profile is loaded, listing
the names that exist, never silently score with fewer plugins. The registry is immutable: it
is built once (``ml_scheduler.plugins.PLUGINS``) and never registered into at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType

from ml_scheduler.framework.interfaces import FilterPlugin, Plugin, ScorePlugin
from treeline_common.errors import InvalidInput

PluginFactory = Callable[[], Plugin]


class UnknownPlugin(InvalidInput):
    """A profile or caller named a plugin the registry does not have (or of the wrong kind)."""


class Registry(Mapping[str, PluginFactory]):
    """Immutable ``name -> factory``. Duplicate names fail at construction."""

    def __init__(self, factories: Iterable[tuple[str, PluginFactory]]) -> None:
        table: dict[str, PluginFactory] = {}
        for name, factory in factories:
            if name in table:
                raise ValueError(f"a plugin named {name!r} already exists")
            table[name] = factory
        self._table = MappingProxyType(table)

    @classmethod
    def of(cls, *plugin_classes: type) -> Registry:
        """A registry of plugin classes keyed by their class attribute ``name``."""
        return cls((str(c.name), c) for c in plugin_classes)  # type: ignore[attr-defined]

    def __getitem__(self, name: str) -> PluginFactory:
        return self._table[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def create(self, name: str) -> Plugin:
        """A new instance of the plugin ``name``; ``UnknownPlugin`` lists the known names."""
        if name not in self._table:
            raise UnknownPlugin(f"unknown scheduler plugin {name!r}; known: {', '.join(sorted(self._table))}",
                                [{"path": name, "message": "unknown plugin"}])
        return self._table[name]()

    def filter_names(self) -> tuple[str, ...]:
        """Filter plugin names in registration order (the order the runner applies them)."""
        return tuple(n for n in self._table if isinstance(self._table[n](), FilterPlugin))

    def score_names(self) -> tuple[str, ...]:
        return tuple(n for n in self._table if isinstance(self._table[n](), ScorePlugin))


def as_filters(registry: Mapping[str, PluginFactory], names: Iterable[str]) -> tuple[FilterPlugin, ...]:
    """The named plugins, each checked to be a filter plugin (``UnknownPlugin`` otherwise)."""
    return tuple(_typed(registry, name, FilterPlugin, "filter") for name in names)  # type: ignore[misc]


def as_scores(registry: Mapping[str, PluginFactory], names: Iterable[str]) -> tuple[ScorePlugin, ...]:
    """The named plugins, each checked to be a score plugin (``UnknownPlugin`` otherwise)."""
    return tuple(_typed(registry, name, ScorePlugin, "score") for name in names)  # type: ignore[misc]


def _typed(registry: Mapping[str, PluginFactory], name: str, kind: type, label: str) -> Plugin:
    if name not in registry or not isinstance(plugin := registry[name](), kind):
        # only for the message: every plugin built and checked (runtime Protocol checks are slow)
        known = sorted(n for n, f in registry.items() if isinstance(f(), kind))
        raise UnknownPlugin(f"unknown {label} plugin {name!r}; known: {', '.join(known)}",
                            [{"path": f"weights.{name}" if label == "score" else name,
                              "message": f"not a {label} plugin; known: {', '.join(known)}"}])
    return plugin

