"""What can be checked about the Docker deployment without a Docker engine: the compose file
parses, every Dockerfile and COPY source and mounted config exists, no host networking, the
node image carries no orchestrator code (contracts.md: the node runs without them), and the
root has two clusters, each with its own broker, name, ports and state."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
ORCHESTRATOR_PACKAGES = {"root_orchestrator", "cluster_orchestrator", "ml_scheduler"}


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return doc


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose()["services"]
    return result


def built_services() -> list[tuple[str, Path, Path]]:
    """(service, build context, Dockerfile) for every service with a ``build`` section."""
    out = []
    for name, service in services().items():
        build = service.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = (REPO / build.get("context", ".")).resolve()
        out.append((name, context, context / build.get("dockerfile", "Dockerfile")))
    return out


def copy_sources(dockerfile: Path) -> list[str]:
    """Sources of every COPY/ADD taken from the build context (``--from=`` stages excluded)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    sources: list[str] = []
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if len(words) < 2 or words[0].upper() not in ("COPY", "ADD"):
            continue
        rest = words[1].strip()
        args: list[str] = yaml.safe_load(rest) if rest.startswith("[") else shlex.split(rest)
        if any(a.startswith("--from=") for a in args):
            continue
        paths = [a for a in args if not a.startswith("--")]
        sources.extend(paths[:-1])  # the last one is the destination
    return sources


def test_compose_parses_with_expected_services() -> None:
    assert {"mongo", "root", "cluster_mqtt", "cluster", "node"} <= set(services())
    assert services()["mongo"]["image"] == "mongo:8.0"
    assert services()["cluster_mqtt"]["image"].startswith("eclipse-mosquitto:2")


def test_commands_match_the_contracts() -> None:
    root = " ".join(services()["root"]["command"])
    cluster = " ".join(services()["cluster"]["command"])
    node = " ".join(services()["node"]["command"])
    assert root.startswith("python -m root_orchestrator --host 0.0.0.0 --port 10000")
    assert "--store-url mongodb://mongo:27017/treeline" in root
    assert cluster.startswith("python -m cluster_orchestrator --host 0.0.0.0 --port 10100")
    assert "--root-url ${TREELINE_ROOT_URL:-http://root:10000}" in cluster
    assert "--mqtt-url mqtt://${TREELINE_MQTT_HOST:-cluster_mqtt}" in cluster
    assert node.startswith("python -m node_engine --cluster-url ${TREELINE_CLUSTER_URL:-http://cluster:10100}")


def test_every_built_service_has_its_dockerfile() -> None:
    built = built_services()
    assert {name for name, _, _ in built} == {"root", "cluster", "node", "cluster2", "node2"}
    # the second cluster and its node run the same two images as the first ones
    assert {services()[n]["image"] for n in ("cluster", "cluster2")} == {"treeline/cluster:0.1.0"}
    assert {services()[n]["image"] for n in ("node", "node2")} == {"treeline/node:0.1.0"}
    for name, context, dockerfile in built:
        assert context == REPO, name
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"


@pytest.mark.parametrize("role", ["root", "cluster", "node"])
def test_every_copy_source_exists_and_passes_the_dockerignore(role: str) -> None:
    dockerfile = REPO / "docker" / f"{role}.Dockerfile"
    sources = copy_sources(dockerfile)
    assert "pyproject.toml" in sources and "README.md" in sources and "treeline_common" in sources
    missing = [s for s in sources if not (REPO / s).exists()]
    assert not missing, f"{dockerfile.name} copies paths that do not exist: {missing}"
    ignore = REPO / "docker" / f"{role}.Dockerfile.dockerignore"
    lines = ignore.read_text(encoding="utf-8").splitlines()
    allowed = {line[1:].strip() for line in lines if line.startswith("!")}
    assert set(sources) <= allowed, f"{ignore.name} excludes {set(sources) - allowed}"


@pytest.mark.parametrize("role", ["root", "cluster", "node"])
def test_images_run_unprivileged_from_slim_python(role: str) -> None:
    text = (REPO / "docker" / f"{role}.Dockerfile").read_text(encoding="utf-8")
    bases = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert all(base.startswith("python:3.11-slim") for base in bases)
    assert re.search(r"^USER (?!root)\S+", text, re.MULTILINE)
    assert "pip install" in text and "torch" not in text.split("pip install", 1)[1].split("\n", 1)[0]
    assert re.search(r"^EXPOSE \d+", text, re.MULTILINE) or role == "node"


def test_node_image_carries_no_orchestrator_code() -> None:
    dockerfile = REPO / "docker" / "node.Dockerfile"
    copied = {Path(s).parts[0] for s in copy_sources(dockerfile)}
    assert copied == {"pyproject.toml", "README.md", "treeline_common", "node_engine"}
    assert not copied & ORCHESTRATOR_PACKAGES
    ignore = (REPO / "docker" / "node.Dockerfile.dockerignore").read_text(encoding="utf-8")
    assert not any(f"!{pkg}" in ignore for pkg in ORCHESTRATOR_PACKAGES)


def test_mounted_config_files_exist() -> None:
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                assert (REPO / source).resolve().exists(), f"{name}: {source} missing"


def test_mosquitto_config_allows_anonymous_on_1883() -> None:
    lines = [line.split("#", 1)[0].split() for line in
             (REPO / "docker" / "mosquitto.conf").read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    assert ["listener", "1883", "0.0.0.0"] in lines or ["listener", "1883"] in lines
    assert ["allow_anonymous", "true"] in lines  # Mosquitto 2 refuses anonymous clients otherwise


def test_no_host_networking_and_ports_published() -> None:
    for name, service in services().items():
        assert service.get("network_mode") not in ("host",), name
        assert "host" not in (service.get("networks") or {}), name
    for name, port in (("root", "10000"), ("cluster", "10100"), ("cluster_mqtt", "1883"), ("node", "10200"),
                       ("cluster2", "10100"), ("cluster2_mqtt", "1883"), ("node2", "10200")):
        assert any(str(p).endswith(f":{port}") for p in services()[name]["ports"]), name


def test_every_service_belongs_to_a_host_role_profile() -> None:
    for name, service in services().items():
        profiles = set(service.get("profiles", []))
        assert "all" in profiles and profiles & {"root", "cluster", "cluster2", "node"}, name


def in_profile(profile: str) -> set[str]:
    return {name for name, service in services().items() if profile in service.get("profiles", [])}


def published(name: str) -> set[str]:
    """The host side (``${VAR:-PORT}`` or ``PORT``) of a service's published ports."""
    return {str(p).rsplit(":", 1)[0] for p in services()[name].get("ports", [])}


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def state(name: str) -> set[str]:
    """A service's named volumes (its state; mounted config files are shared read-only)."""
    volumes = [str(v) for v in services()[name].get("volumes", [])]
    return {v.split(":", 1)[0] for v in volumes if not v.startswith(".")}


def test_the_root_has_two_clusters_each_with_its_own_broker() -> None:
    # "all" is a root with two clusters; a cluster host ("cluster") still starts one cluster
    assert {"root", "cluster", "cluster_mqtt", "cluster2", "cluster2_mqtt", "node", "node2"} <= in_profile(
        "all")
    assert in_profile("cluster") == {"cluster", "cluster_mqtt"}
    assert in_profile("cluster2") == {"cluster2", "cluster2_mqtt", "node2"}
    first, second = services()["cluster"], services()["cluster2"]
    # each cluster talks to its own Mosquitto service and waits for it
    assert option(first["command"], "--mqtt-url").startswith("mqtt://${TREELINE_MQTT_HOST:-cluster_mqtt}")
    assert option(second["command"], "--mqtt-url") == "${TREELINE_MQTT2_URL:-mqtt://cluster2_mqtt:1883}"
    assert "cluster_mqtt" in first["depends_on"] and "cluster2_mqtt" in second["depends_on"]
    assert services()["cluster2_mqtt"]["image"] == services()["cluster_mqtt"]["image"]
    # distinct names, public URLs, published ports and state
    assert option(first["command"], "--name") != option(second["command"], "--name")
    assert option(first["command"], "--public-url") != option(second["command"], "--public-url")
    for a, b in (("cluster", "cluster2"), ("cluster_mqtt", "cluster2_mqtt"), ("node", "node2")):
        assert published(a).isdisjoint(published(b)), (a, b)
        assert state(a).isdisjoint(state(b)), (a, b)
    defaults = [re.sub(r"\$\{[A-Z0-9_]+:-(\d+)\}", r"\1", port) for n in in_profile("all")
                for port in published(n)]
    assert len(defaults) == len(set(defaults)), f"one host port published twice: {sorted(defaults)}"
    # each node joins its own cluster; the root accepts the second cluster's own token
    node2 = services()["node2"]["command"]
    assert option(node2, "--cluster-url") == option(second["command"], "--public-url")
    assert "TREELINE_CLUSTER2_TOKEN" in services()["root"]["environment"]["TREELINE_CLUSTER_TOKEN"]
    assert "TREELINE_CLUSTER2_TOKEN" in second["environment"]["TREELINE_ROOT_TOKEN"]
