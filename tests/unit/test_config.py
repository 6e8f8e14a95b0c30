"""treeline_common.config: precedence flag > env > file > default, with the source of every value."""

from __future__ import annotations

from pathlib import Path

import pytest

from treeline_common.config import (
    ConfigError,
    config_candidates,
    file_settings,
    load_settings,
    read_config_file,
    resolve_settings,
)

CWD = Path("/work/here")
FILE = Path("/etc/treeline/treeline.toml")


@pytest.mark.parametrize(("flags", "env", "file", "expected", "source"), [
    ({}, {}, {}, 3, "default"),
    ({}, {}, {"nodes": 4}, 4, f"file {FILE}"),
    ({}, {"TREELINE_NODES": "5"}, {"nodes": 4}, 5, "env TREELINE_NODES"),
    ({"nodes": 6}, {"TREELINE_NODES": "5"}, {"nodes": 4}, 6, "flag --nodes"),
    ({"nodes": None}, {"TREELINE_NODES": "5"}, {}, 5, "env TREELINE_NODES"),  # an unset flag is not given
])
def test_precedence_flag_env_file_default(flags: dict, env: dict, file: dict, expected: int,
                                          source: str) -> None:
    settings = resolve_settings(flags, env, file, FILE, CWD)
    assert settings.nodes == expected
    assert settings.sources["nodes"] == source


def test_root_url_defaults_to_root_port_and_says_so() -> None:
    settings = resolve_settings({}, {"TREELINE_ROOT_PORT": "10005"}, {}, None, CWD)
    assert settings.root_url == "http://127.0.0.1:10005"
    assert settings.sources["root_url"] == "default (from root_port)"
    explicit = resolve_settings({"root_url": "http://h:1/"}, {"TREELINE_ROOT_PORT": "10005"}, {}, None, CWD)
    assert explicit.root_url == "http://h:1"


def test_mqtt_url_is_an_alias_of_broker_url_in_env_and_file() -> None:
    from_env = resolve_settings({}, {"TREELINE_MQTT_URL": "mqtt://b:1883"}, {}, None, CWD)
    assert from_env.broker_url == from_env.mqtt_url == "mqtt://b:1883"
    assert file_settings({"mqtt_url": "mqtt://c:1"}, FILE) == {"broker_url": "mqtt://c:1"}


def test_profiles_parse_from_strings_and_lists() -> None:
    from_env = resolve_settings({}, {"TREELINE_PROFILES": "server, rpi4"}, {}, None, CWD)
    assert from_env.profiles == ("server", "rpi4")
    assert resolve_settings({}, {}, {"profiles": ["rpi4"]}, FILE, CWD).profiles == ("rpi4",)


@pytest.mark.parametrize(("flags", "env", "names"), [
    ({"nodes": 0}, {}, ("nodes", "flag --nodes")),
    ({}, {"TREELINE_NODES": "two"}, ("nodes", "env TREELINE_NODES")),
    ({"profiles": "server,gpu9000"}, {}, ("gpu9000", "flag --profiles")),
    ({}, {"TREELINE_LOG_LEVEL": "chatty"}, ("log_level", "env TREELINE_LOG_LEVEL")),
    ({"root_url": "localhost"}, {}, ("root_url", "flag --root-url")),
    ({"root_port": 70000}, {}, ("root_port", "at most 65535")),
])
def test_invalid_values_name_the_option_and_where_they_came_from(flags: dict, env: dict,
                                                                 names: tuple) -> None:
    with pytest.raises(ConfigError) as raised:
        resolve_settings(flags, env, {}, None, CWD)
    for name in names:
        assert name in raised.value.message


def test_relative_data_dir_is_relative_to_cwd_or_to_the_file() -> None:
    assert resolve_settings({}, {}, {}, None, CWD).data_dir == CWD / ".treeline"
    assert resolve_settings({"data_dir": "state"}, {}, {}, None, CWD).data_dir == CWD / "state"
    assert resolve_settings({}, {}, {"data_dir": "state"}, FILE, CWD).data_dir == FILE.parent / "state"


def test_unknown_file_keys_are_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown option 'node'.*known: .*nodes"):
        file_settings({"node": 3}, FILE)
    assert file_settings({"treeline": {"nodes": 2}}, FILE) == {"nodes": 2}


def test_load_reads_the_working_directory_file_before_the_home_one(tmp_path: Path) -> None:
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    (home / ".config" / "treeline").mkdir(parents=True)
    cwd.mkdir()
    (home / ".config" / "treeline" / "treeline.toml").write_text('nodes = 7\nlog_level = "debug"\n')
    assert config_candidates(cwd, home)[0] == cwd / "treeline.toml"
    settings = load_settings({}, {}, cwd, home)
    assert (settings.nodes, settings.log_level) == (7, "DEBUG")
    assert settings.config_file == home / ".config" / "treeline" / "treeline.toml"
    (cwd / "treeline.toml").write_text("nodes = 2\n")
    settings = load_settings({}, {}, cwd, home)
    assert (settings.nodes, settings.log_level, settings.config_file) == (2, "INFO", cwd / "treeline.toml")


def test_bad_toml_and_a_missing_named_file_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "treeline.toml"
    bad.write_text("nodes = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_config_file(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({}, {"TREELINE_CONFIG": str(tmp_path / "nope.toml")}, tmp_path, tmp_path)


def test_settings_are_frozen_and_list_every_option_with_its_source() -> None:
    settings = resolve_settings({"nodes": 2}, {}, {}, None, CWD)
    with pytest.raises(AttributeError):
        settings.nodes = 3  # type: ignore[misc]
    as_dict = settings.as_dict()
    assert as_dict["nodes"] == {"value": 2, "source": "flag --nodes"}
    assert as_dict["profiles"]["value"] == ["server", "jetson-nano", "rpi4"]
    assert {"root_url", "cluster_url", "broker_url", "data_dir", "root_port", "cluster_port", "nodes",
            "profiles", "log_level"} <= set(as_dict)


# ---------------------------------------------------------------- every process reads the same settings


@pytest.fixture
def no_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory and home without treeline.toml, and no TREELINE_* variable."""
    import os

    for name in [n for n in os.environ if n.startswith("TREELINE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_process_settings_read_the_file_named_by_config_in_argv_and_the_environment(
        no_settings: Path) -> None:
    from treeline_common.config import process_settings

    conf = no_settings / "stack.toml"
    conf.write_text('root_port = 11000\ncluster_port = 11100\ndata_dir = "state"\n')
    settings = process_settings(["--port", "1", "--config", str(conf)], {"TREELINE_CLUSTER_PORT": "11200"})
    assert (settings.root_port, settings.cluster_port) == (11000, 11200)
    assert settings.data_dir == no_settings / "state"  # relative to the file
    assert settings.root_url == "http://127.0.0.1:11000"
    assert process_settings([], {}).root_port == 10000  # no file found: defaults


def test_broker_port_is_a_setting_zero_meaning_a_free_port() -> None:
    assert resolve_settings({}, {}, {}, None, CWD).broker_port == 0
    assert resolve_settings({}, {"TREELINE_BROKER_PORT": "1883"}, {}, None, CWD).broker_port == 1883
    with pytest.raises(ConfigError, match="broker_port"):
        resolve_settings({"broker_port": -1}, {}, {}, None, CWD)


def test_root_takes_port_data_dir_public_url_and_log_level_from_the_settings(
        no_settings: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from root_orchestrator.__main__ import parse_args

    (no_settings / "treeline.toml").write_text('root_port = 11000\ndata_dir = "state"\nlog_level = "debug"\n')
    args = parse_args([])
    assert (args.port, args.data_dir, args.public_url, args.log_level) == (
        11000, no_settings / "state" / "root", None, "DEBUG")
    monkeypatch.setenv("TREELINE_ROOT_URL", "http://root.example:11000")
    monkeypatch.setenv("TREELINE_INSTANCE_ID", "given-by-up")
    args = parse_args([])
    assert (args.public_url, args.instance_id) == ("http://root.example:11000", "given-by-up")
    args = parse_args(["--port", "12000", "--data-dir", "elsewhere", "--instance-id", "flag"])  # flags win
    assert (args.port, str(args.data_dir), args.instance_id) == (12000, "elsewhere", "flag")


def test_cluster_takes_root_url_broker_url_port_and_data_dir_from_the_settings(
        no_settings: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cluster_orchestrator.__main__ import parse_args

    monkeypatch.setenv("TREELINE_ROOT_PORT", "11000")
    monkeypatch.setenv("TREELINE_CLUSTER_PORT", "11100")
    monkeypatch.setenv("TREELINE_BROKER_URL", "mqtt://broker.example:1884")
    args = parse_args([])
    assert (args.root_url, args.mqtt_url, args.port, args.public_url) == (
        "http://127.0.0.1:11000", "mqtt://broker.example:1884", 11100, None)
    assert args.data_dir == no_settings / ".treeline" / "cluster"
    args = parse_args(["--root-url", "http://r:1", "--mqtt-url", "mqtt://m:2"])
    assert (args.root_url, args.mqtt_url) == ("http://r:1", "mqtt://m:2")
    monkeypatch.delenv("TREELINE_BROKER_URL")
    assert parse_args([]).mqtt_url == "mqtt://127.0.0.1:1883"


def test_node_engine_takes_cluster_url_data_dir_and_threads_from_the_settings(
        no_settings: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from node_engine.config import parse_args

    (no_settings / "treeline.toml").write_text('cluster_port = 11100\nthreads = 2\ndata_dir = "state"\n')
    config = parse_args(["--name", "rpi4-9", "--profile", "rpi4"])
    assert (config.cluster_url, config.threads, config.data_dir) == (
        "http://127.0.0.1:11100", 2, str(no_settings / "state" / "nodes" / "rpi4-9"))
    monkeypatch.setenv("TREELINE_CLUSTER_URL", "http://cluster.example:10100")
    assert parse_args(["--name", "n"]).cluster_url == "http://cluster.example:10100"
    config = parse_args(["--name", "n", "--cluster-url", "http://c:1", "--data-dir", "d", "--threads", "0"])
    assert (config.cluster_url, config.data_dir, config.threads) == ("http://c:1", "d", 0)


def test_an_invalid_setting_stops_a_process_before_it_starts_with_status_2(
        no_settings: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from node_engine.config import parse_args

    monkeypatch.setenv("TREELINE_THREADS", "many")
    with pytest.raises(SystemExit) as exited:
        parse_args(["--name", "n"])
    assert exited.value.code == 2
    assert "threads: must be an integer" in capsys.readouterr().err
