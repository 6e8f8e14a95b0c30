"""A node installs and imports only what a device needs (issue 10, item 5).

- the base package's dependencies are the node's, and none of the server side's;
- the node engine's import closure (``python -m node_engine`` / ``treeline node``), checked in a
  fresh interpreter with an import hook that refuses the server side's packages, takes third-party
  packages only from the node's dependencies;
- every node dependency, with everything it pulls in, installs from manylinux aarch64 wheels
  (``pip download --only-binary=:all:``; skipped when no package index answers);
- the console scripts point at callables that exist, and ``treeline node`` runs without click.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
NODE_DEPENDENCIES = PYPROJECT["project"]["dependencies"]

# Packages a node must never import: the orchestrators', the CLI's and the exporter's.
FORBIDDEN = ("flask", "werkzeug", "waitress", "jinja2", "torch", "onnx", "onnxscript", "pymongo", "gridfs",
             "bson", "mongomock", "jsonschema", "apscheduler", "jwt", "argon2", "click", "rich", "yaml",
             "amqtt", "ml_scheduler", "cluster_orchestrator", "root_orchestrator", "treeline_cli.main",
             "treeline_cli.commands",
             "dns")  # dnspython: paho-mqtt uses it when present (pymongo brings it), a node goes without
# Import names of the node's distributions and of what they pull in.
ALLOWED_THIRD_PARTY = {"numpy", "onnxruntime", "paho", "zmq", "psutil", "requests", "urllib3", "idna",
                       "charset_normalizer", "certifi", "pynvml", "flatbuffers", "packaging", "google",
                       "prometheus_client"}  # the node's /metrics (--metrics-port): pure Python, no dependencies

# The probe refuses every FORBIDDEN import, imports the node's entry points and prints the
# third-party top-level modules that got loaded (those living under a site-packages directory).
PROBE = """
import importlib.abc, json, sys
FORBIDDEN = set(json.loads(sys.argv[1]))
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
            raise ImportError(f"the node imported {name}", name=name)
        return None
sys.meta_path.insert(0, Refuse())
import node_engine.__main__, node_engine.daemon, node_engine.artifacts, node_engine.runtime
import treeline_cli.entry
loaded = sorted({m.split(".")[0] for m, mod in list(sys.modules.items())
                 if "site-packages" in (getattr(mod, "__file__", None) or "")})
print(json.dumps(loaded))
"""


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()


def test_the_base_package_is_what_a_node_needs() -> None:
    names = {_name(r) for r in NODE_DEPENDENCIES}
    assert {"onnxruntime", "numpy", "paho-mqtt", "pyzmq", "psutil", "requests"} <= names
    assert not names & {"flask", "torch", "onnx", "pymongo", "waitress", "click", "rich", "jsonschema"}
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert extras["node"] == []
    server = {_name(r) for r in extras["server"]}
    assert {"flask", "onnx", "pymongo", "waitress"} <= server
    assert "treeline[all]" in extras["dev"]  # `make test` (.[export,dev]) still installs everything


def test_the_node_import_closure_has_no_server_side_packages() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(FORBIDDEN)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert {"numpy", "onnxruntime", "zmq", "paho", "psutil"} <= loaded
    assert loaded - {"_distutils_hack", "__editable___treeline_0_1_0_finder"} <= ALLOWED_THIRD_PARTY, loaded


def test_the_probe_can_fail() -> None:
    """The hook really refuses: a forbidden package the node does not use is reported."""
    result = subprocess.run([sys.executable, "-c", PROBE.replace("import treeline_cli.entry", "import yaml"),
                             json.dumps(FORBIDDEN)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "the node imported yaml" in result.stderr


def test_console_scripts_resolve() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    assert set(scripts) >= {"treeline", "treeline-node"}
    for target in scripts.values():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), target


def test_treeline_node_runs_without_the_cli_dependencies() -> None:
    """``treeline node --help`` with click refused; any other command names the missing extra."""
    hook = ("import importlib.abc, sys\n"
            "class Refuse(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('click', 'rich', 'yaml'):\n"
            "            raise ImportError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, Refuse())\n"
            "from treeline_cli.entry import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    node = subprocess.run([sys.executable, "-c", hook, "node", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert node.returncode == 0, node.stderr[-2000:]
    assert "usage: treeline node" in node.stdout and "--cluster-url" in node.stdout
    assert "--join-token" in node.stdout and "--memory-limit-mb" in node.stdout
    other = subprocess.run([sys.executable, "-c", hook, "get", "jobs"], cwd=REPO, capture_output=True,
                           text=True, timeout=60)
    assert other.returncode == 2
    assert "pip install 'treeline[cli]'" in other.stderr and "Traceback" not in other.stderr


def test_treeline_node_defaults_to_the_native_profile_and_the_token_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from node_engine.config import parse_args

    monkeypatch.setenv("TREELINE_JOIN_TOKEN", "tlj_abc_secret")
    config = parse_args(["--cluster-url", "http://cluster:10100/", "--memory-limit-mb", "512"],
                        prog="treeline node")
    assert config.profile.name == "native" and not config.profile.emulated
    assert config.join_token == "tlj_abc_secret" and config.cluster_url == "http://cluster:10100"
    assert config.profile.memory_limit_mb == 512


AARCH64 = ["--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_28_aarch64"]


def test_every_node_dependency_has_a_manylinux_aarch64_wheel(tmp_path: Path) -> None:
    """A Raspberry Pi 4 or a Jetson (glibc >= 2.28) installs the node from wheels alone."""
    command = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", *AARCH64,
               "--python-version", "311", "--implementation", "cp", "--disable-pip-version-check",
               "--no-input", "-d", str(tmp_path), *NODE_DEPENDENCIES]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.skip("the package index did not answer within 240 s")
    unreachable = ("Could not fetch URL", "NewConnectionError", "Network is unreachable", "Temporary failure",
                   "Max retries exceeded")
    if result.returncode != 0 and any(mark in result.stderr for mark in unreachable):
        pytest.skip(f"no package index reachable: {result.stderr.strip().splitlines()[-1][:200]}")
    assert result.returncode == 0, result.stderr[-3000:]
    wheels = sorted(p.name for p in tmp_path.iterdir())
    assert all(name.endswith(".whl") for name in wheels), wheels
    for wheel in wheels:  # binary wheels are aarch64 ones; the rest are pure Python
        platform = wheel.rsplit("-", 1)[-1].removesuffix(".whl")
        assert platform == "any" or "aarch64" in platform, wheel
    names = {_name(w.split("-", 1)[0].replace("_", "-")) for w in wheels}
    assert {_name(r).replace("_", "-") for r in NODE_DEPENDENCIES} <= names, (names, NODE_DEPENDENCIES)


def test_graph_nodes_match_onnx_without_importing_it(tmp_path: Path) -> None:
    """Profiling names kernels from the model file with node_engine.onnx_nodes, not the onnx package."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from node_engine.onnx_nodes import graph_nodes

    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
             helper.make_node("Relu", ["a"], ["b"]),  # unnamed, as exporters often leave them
             helper.make_node("Relu", ["b"], ["c"]),
             helper.make_node("Add", ["c", "a"], ["y"], name="mm")]  # a duplicate name
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight])
    model = helper.make_model(graph)
    onnx.save(model, tmp_path / "external.onnx", save_as_external_data=True, size_threshold=0)
    onnx.save(model, tmp_path / "inline.onnx")
    expected = [(n.name, n.op_type, tuple(n.output)) for n in model.graph.node]
    for name in ("external.onnx", "inline.onnx"):
        assert [(n.name, n.op_type, n.outputs) for n in graph_nodes(tmp_path / name)] == expected
    (tmp_path / "cut.onnx").write_bytes((tmp_path / "inline.onnx").read_bytes()[:-40])
    with pytest.raises(ValueError, match="truncated"):
        graph_nodes(tmp_path / "cut.onnx")

