"""Treeline's settings: one TOML file, environment variables and flags, with a stated precedence.

Every option has one name (``root_url``) and three spellings: the key ``root_url`` in
``treeline.toml``, the environment variable ``TREELINE_ROOT_URL`` and the flag ``--root-url``.
A value comes from the first of these that sets it:

    flag  >  environment  >  file  >  default

The file is the one named by ``--config`` or ``$TREELINE_CONFIG`` if given, else the first that
exists of ``./treeline.toml`` and ``~/.config/treeline/treeline.toml``; only one file is read.

The module is split so that its core is pure: :func:`resolve_settings` takes the flag values,
the environment and the file's parsed contents and returns a frozen :class:`Settings` that
records where each value came from; it touches neither the disk nor ``os.environ``.
:func:`find_config_file`, :func:`read_config_file` and :func:`load_settings` are the thin I/O
edge around it. The CLI uses it for every command; the orchestrators and the node engine can
read the same file with :func:`load_settings`.

Every invalid value is refused with :class:`ConfigError` (an ``InvalidInput``) naming the option,
the bad value and where it came from, so a caller can refuse it before anything starts.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from treeline_common.errors import InvalidInput
from treeline_common.profiles import PROFILES

ENV_PREFIX = "TREELINE_"
CONFIG_ENV = "TREELINE_CONFIG"
# Not a setting: the identity ``treeline up`` gives each child it starts, which the child reports
# in ``GET /api/health`` so that ``up`` can tell its own processes from another stack's.
INSTANCE_ID_ENV = "TREELINE_INSTANCE_ID"
FILE_NAME = "treeline.toml"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
BROKER_KINDS = ("auto", "mosquitto", "amqtt")

DEFAULT = "default"


class ConfigError(InvalidInput):
    """A configuration value that cannot be used; the message names the option and its source.

    ``source`` is where the bad value came from (``flag --nodes``, ``env TREELINE_NODES``,
    ``file PATH``), or empty when the file itself is the problem.
    """

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None, source: str = "") -> None:
        super().__init__(message, details)
        self.source = source


@dataclass(frozen=True)
class Option:
    """One setting: its name, how a raw value (string, TOML value) becomes a typed one, its default.

    ``default`` may be a function of the other (already resolved) settings, e.g. ``root_url`` of
    ``root_port``; such options are resolved after those they depend on (declaration order).
    """

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    aliases: tuple[str, ...] = ()  # other keys accepted in the file and the environment

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


# ---------------------------------------------------------------- value parsers (raise ValueError)


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value.strip()


def _optional_text(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _text(value)


def _url(value: Any) -> str:
    text = _text(value)
    if "://" not in text:
        raise ValueError("must be a URL such as http://127.0.0.1:10000")
    return text.rstrip("/")


def _optional_mqtt_url(value: Any) -> str | None:
    text = _optional_text(value)
    if text is not None and not text.startswith(("mqtt://", "tcp://")):
        raise ValueError("must be an MQTT URL such as mqtt://127.0.0.1:1883")
    return text


def _int(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("must be an integer")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError("must be an integer") from None
        if isinstance(value, float) and number != value:
            raise ValueError("must be an integer")
        if number < minimum:
            raise ValueError(f"must be at least {minimum}")
        if maximum is not None and number > maximum:
            raise ValueError(f"must be at most {maximum}")
        return number
    return parse


def _choice(choices: Sequence[str], upper: bool = False) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(value)
        text = text.upper() if upper else text
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text
    return parse


def _profiles(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [p.strip() for p in value.split(",")]
    elif isinstance(value, list | tuple):
        items = [str(p).strip() for p in value]
    else:
        raise ValueError("must be a comma-separated string or a list of profile names")
    names = tuple(p for p in items if p)
    if not names:
        raise ValueError("must name at least one profile")
    unknown = [p for p in names if p not in PROFILES]
    if unknown:
        raise ValueError(f"unknown profile {', '.join(repr(p) for p in unknown)} "
                         f"(known: {', '.join(sorted(PROFILES))})")
    return names


def _path(value: Any) -> Path:
    if isinstance(value, Path):
        return value
    return Path(_text(value)).expanduser()


OPTIONS: tuple[Option, ...] = (
    Option("root_port", _int(1, 65535), 10000, "port the root orchestrator listens on (`up`)"),
    Option("cluster_port", _int(1, 65535), 10100, "port the cluster orchestrator listens on (`up`)"),
    Option("root_url", _url, lambda s: f"http://127.0.0.1:{s['root_port']}",
           "the root orchestrator's REST API (default: 127.0.0.1 on root_port)"),
    Option("cluster_url", _url, lambda s: f"http://127.0.0.1:{s['cluster_port']}",
           "the cluster orchestrator's REST API (default: 127.0.0.1 on cluster_port)"),
    Option("broker_url", _optional_mqtt_url, None,
           "an MQTT broker to use instead of starting one (`up`)", aliases=("mqtt_url",)),
    Option("broker", _choice(BROKER_KINDS), "auto",
           "broker `up` starts when broker_url is unset: auto (mosquitto if installed), mosquitto, amqtt"),
    Option("broker_port", _int(0, 65535), 0, "port of the broker `up` starts (0: a free one)"),
    Option("data_dir", _path, Path(".treeline"),
           "state and logs of `up` (relative to the working directory)"),
    Option("nodes", _int(1), 3, "node engines `up` starts"),
    Option("profiles", _profiles, ("server", "jetson-nano", "rpi4"),
           "emulation profiles, cycled over the nodes"),
    Option("threads", _int(0), 0, "onnxruntime threads per node engine (0: onnxruntime's default)"),
    Option("log_level", _choice(LOG_LEVELS, upper=True), "INFO", "log level of the processes `up` starts"),
)
OPTIONS_BY_NAME: Mapping[str, Option] = MappingProxyType({o.name: o for o in OPTIONS})


@dataclass(frozen=True)
class Settings:
    """Resolved settings; ``sources[name]`` says where each value came from
    (``flag --nodes``, ``env TREELINE_NODES``, ``file /path/treeline.toml``, ``default``)."""

    root_url: str
    cluster_url: str
    broker_url: str | None
    broker: str
    broker_port: int
    data_dir: Path
    root_port: int
    cluster_port: int
    nodes: int
    profiles: tuple[str, ...]
    threads: int
    log_level: str
    sources: Mapping[str, str] = field(default_factory=dict)
    config_file: Path | None = None

    @property
    def mqtt_url(self) -> str | None:
        """The older name of :attr:`broker_url`."""
        return self.broker_url

    def rows(self) -> list[tuple[str, Any, str]]:
        """``(name, value, source)`` for every option, in declaration order."""
        return [(o.name, getattr(self, o.name), self.sources.get(o.name, DEFAULT)) for o in OPTIONS]

    def as_dict(self) -> dict[str, Any]:
        """JSON-able ``{name: {value, source}}``."""
        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, tuple):
                return list(value)
            return value
        return {name: {"value": plain(value), "source": source} for name, value, source in self.rows()}


# ---------------------------------------------------------------- pure core


def file_settings(raw: Mapping[str, Any], path: Path | None) -> dict[str, Any]:
    """The options of a parsed TOML document, by canonical name; unknown keys are refused.

    The options may sit at the top level or under a ``[treeline]`` table.
    """
    table = raw.get("treeline", raw) if isinstance(raw.get("treeline"), dict) else raw
    where = f" in {path}" if path else ""
    by_key = {key: option for option in OPTIONS for key in option.keys}
    values: dict[str, Any] = {}
    for key, value in table.items():
        option = by_key.get(key)
        if option is None:
            raise ConfigError(f"unknown option {key!r}{where}; known: {', '.join(o.name for o in OPTIONS)}",
                              [{"path": key, "message": "unknown option"}])
        values[option.name] = value
    return values


def env_settings(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """``{name: (raw value, source)}`` of the ``TREELINE_*`` variables that are set."""
    found: dict[str, tuple[Any, str]] = {}
    for option in OPTIONS:
        for key in option.keys:
            var = ENV_PREFIX + key.upper()
            if var in environ and option.name not in found:
                found[option.name] = (environ[var], f"env {var}")
    return found


def resolve_settings(flags: Mapping[str, Any], environ: Mapping[str, str],
                     file_values: Mapping[str, Any] | None = None, file_path: Path | None = None,
                     cwd: Path | None = None) -> Settings:
    """Settings from flags (values that are None count as not given), environment, file, defaults.

    Pure. Relative ``data_dir`` values are made absolute against ``cwd`` (flag, environment,
    default) or against the file's folder (file). Raises :class:`ConfigError` naming the first
    invalid option and where its value came from.
    """
    unknown_flags = set(flags) - set(OPTIONS_BY_NAME)
    if unknown_flags:
        raise ValueError(f"not options: {sorted(unknown_flags)}")
    env = env_settings(environ)
    file_values = file_values or {}
    resolved: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        if flags.get(option.name) is not None:
            raw, source = flags[option.name], f"flag {option.flag}"
        elif option.name in env:
            raw, source = env[option.name]
        elif option.name in file_values:
            raw, source = file_values[option.name], f"file {file_path}" if file_path else "file"
        else:
            default = option.default
            if callable(default):
                raw, source = default(resolved), f"{DEFAULT} (from {_dependency(option)})"
            else:
                raw, source = default, DEFAULT
        try:
            value = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{option.name}: {exc}, got {raw!r} from {source}",
                              [{"path": option.name, "message": str(exc)}], source) from None
        if isinstance(value, Path) and not value.is_absolute():
            base = file_path.parent if source.startswith("file") and file_path else cwd
            value = (base / value) if base is not None else value
        resolved[option.name] = value
        sources[option.name] = source
    return Settings(**resolved, sources=MappingProxyType(sources), config_file=file_path)


def _dependency(option: Option) -> str:
    return {"root_url": "root_port", "cluster_url": "cluster_port"}.get(option.name, "other options")


def config_candidates(cwd: Path, home: Path) -> list[Path]:
    """Where the file is looked for when none is named, in order (pure)."""
    return [cwd / FILE_NAME, home / ".config" / "treeline" / FILE_NAME]


# ---------------------------------------------------------------- I/O edge


def find_config_file(candidates: Sequence[Path]) -> Path | None:
    """The first candidate that is a file."""
    return next((path for path in candidates if path.is_file()), None)


def read_config_file(path: Path) -> dict[str, Any]:
    """The options in ``path`` by canonical name; ConfigError when it is unreadable or not TOML."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return file_settings(raw, path)


def load_settings(flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
                  cwd: Path | None = None, home: Path | None = None,
                  config_file: Path | None = None) -> Settings:
    """Find and read the config file, then :func:`resolve_settings`.

    A file named by ``config_file`` (e.g. a ``--config`` flag) or else by ``$TREELINE_CONFIG`` must
    exist; without either, the first existing file of :func:`config_candidates` is read, if any.
    """
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    home = Path.home() if home is None else home
    if config_file is None and environ.get(CONFIG_ENV):
        config_file = Path(environ[CONFIG_ENV]).expanduser()
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist")
        path: Path | None = config_file
    else:
        path = find_config_file(config_candidates(cwd, home))
    values = read_config_file(path) if path is not None else {}
    return resolve_settings(flags or {}, environ, values, path, cwd)


def process_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """The settings a Treeline process (root, cluster, node engine) takes its flag defaults from.

    The environment and the file only (no flags: the process's own command line wins over
    what this returns); the file is the one ``--config FILE`` in ``argv`` names (default
    ``sys.argv[1:]``), else as for :func:`load_settings`. Raises :class:`ConfigError`.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    known, _ = pre.parse_known_args(argv)
    return load_settings({}, environ, config_file=known.config)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` in a process's help (it is read by :func:`process_settings`)."""
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help=f"treeline.toml to take defaults from (default: ${CONFIG_ENV}, else "
                             f"./{FILE_NAME}, else ~/.config/treeline/{FILE_NAME})")
