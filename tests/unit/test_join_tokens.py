"""Who may join and who may command, without processes.

Cluster side (Flask test client over an in-memory core): node registration needs a join token
(401 with the error body and ``WWW-Authenticate`` without one or with a wrong one), the answer
carries the node's own MQTT credentials, ``/api/join-tokens`` is for the initial token or the
root's credential, the root's routes need the root's token and read-only views stay open.

Root side: a cluster name is bound to the identity that registered it; another identity at
another URL is 409, the root sends each cluster the token it authenticated with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from cluster_orchestrator.api import ClusterAccess, create_app
from cluster_orchestrator.mqtt_auth import MqttCredentials
from cluster_orchestrator.nodes import JOIN_TOKENS_KEY, JoinTokens
from cluster_orchestrator.orchestrator import ClusterConfig, ClusterOrchestrator
from cluster_orchestrator.root_client import RootClient
from cluster_orchestrator.store import InMemoryClusterStateStore
from root_orchestrator.app import create_app as create_root_app
from root_orchestrator.auth import SecurityConfig
from root_orchestrator.auth.passwords import hash_password
from root_orchestrator.auth.tokens import ACCESS
from root_orchestrator.cluster_client import ClusterClient, HttpClusterClient
from root_orchestrator.stores import open_stores
from treeline_common.clock import FakeClock
from treeline_common.errors import InvalidInput
from treeline_common.mqtt_acl import verify_password

REG = {"name": "n1", "profile": "server", "emulated": True, "arch": "x86_64", "cpu_count": 4,
       "memory_limit_mb": 4096, "speed_factor": 1.0, "accelerators": [], "battery": None, "labels": [],
       "data_endpoint": "tcp://127.0.0.1:7001"}
ROOT_TOKEN = "root-token-0123456789abcdef"
GIVEN = "given-join-token-0123456789"


class Bus:
    def publish(self, topic: str, message: Any) -> None:
        pass


class Cluster:
    def __init__(self, tmp_path: Path, given: str | None = GIVEN) -> None:
        config = ClusterConfig(name="c1", root_url="http://127.0.0.1:9", public_url="http://127.0.0.1:10100",
                               mqtt_host="127.0.0.1", mqtt_port=1883)
        self.store = InMemoryClusterStateStore()
        self.store.set_setting("cluster_id", "cid-1")
        self.core = ClusterOrchestrator(config, self.store, RootClient(config.root_url), Bus(), FakeClock())
        self.tokens = JoinTokens(self.store, self.core.clock)
        self.made = self.tokens.ensure_initial(given)
        self.mqtt = MqttCredentials(self.store, tmp_path / "broker", "treeline-cluster", "cluster-pw")
        self.app = create_app(self.core, access=ClusterAccess(root_token=ROOT_TOKEN, join_tokens=self.tokens,
                                                              mqtt=self.mqtt))

    def client(self, token: str | None = None) -> FlaskClient:
        client = self.app.test_client()
        if token is not None:
            client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        return client


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield Cluster(tmp_path)


def _unauthorized(response: Any) -> dict[str, Any]:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.headers["WWW-Authenticate"] == "Bearer"
    error = response.get_json()["error"]
    assert error["code"] == "UNAUTHORIZED" and error["details"][0]["path"] == "Authorization"
    return dict(error)


# ---------------------------------------------------------------- cluster: join tokens


@pytest.mark.parametrize("token", [None, "", "wrong-token-0123456789", GIVEN + "x", ROOT_TOKEN])
def test_registration_without_a_valid_join_token_is_401(cluster: Cluster, token: str | None) -> None:
    error = _unauthorized(cluster.client(token).post("/api/node/register", json=REG))
    assert "join token" in error["message"]
    assert cluster.client(GIVEN).get("/api/nodes").get_json()["nodes"] == []  # nothing registered


def test_registration_with_the_join_token_answers_the_nodes_own_mqtt_identity(cluster: Cluster) -> None:
    answer = cluster.client(GIVEN).post("/api/node/register", json=REG)
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["mqtt_username"] == body["node_id"]
    assert cluster.mqtt.verify(body["node_id"], body["mqtt_password"])
    users = dict(line.split(":", 1) for line in cluster.mqtt.auth.password_file.read_text().splitlines())
    assert verify_password(body["mqtt_password"], users[body["node_id"]])
    # GET /api/nodes shows no secret
    assert "mqtt_password" not in str(cluster.client().get("/api/nodes").get_json())


def test_the_first_start_makes_one_initial_token_and_keeps_only_its_digest(tmp_path: Path) -> None:
    made = Cluster(tmp_path, given=None)
    assert made.made is not None and made.made.startswith("tlj_")
    assert made.tokens.ensure_initial() is None  # the next start makes none
    assert made.made not in str(made.store.get_setting(JOIN_TOKENS_KEY))
    assert made.client(made.made).post("/api/node/register", json=REG).status_code == 200
    with pytest.raises(InvalidInput):
        made.tokens.ensure_initial("short")


def test_more_tokens_come_from_the_initial_token_or_the_root_and_can_be_revoked(cluster: Cluster) -> None:
    made = cluster.client(GIVEN).post("/api/join-tokens", json={"name": "rack-2"})
    assert made.status_code == 201
    doc = made.get_json()
    token = doc["token"]
    assert doc["name"] == "rack-2" and doc["initial"] is False and "sha256" not in doc
    assert cluster.client(ROOT_TOKEN).post("/api/join-tokens").status_code == 201  # the root's credential too
    assert cluster.client(token).post("/api/node/register", json=REG).status_code == 200
    _unauthorized(cluster.client(token).post("/api/join-tokens"))  # a node's token mints nothing
    _unauthorized(cluster.client().get("/api/join-tokens"))
    listed = cluster.client(GIVEN).get("/api/join-tokens").get_json()["join_tokens"]
    assert {t["name"] for t in listed} == {"--join-token", "rack-2", ""}
    assert "sha256" not in str(listed)
    assert cluster.client(ROOT_TOKEN).delete(f"/api/join-tokens/{doc['token_id']}").status_code == 200
    _unauthorized(cluster.client(token).post("/api/node/register", json={**REG, "name": "n2"}))
    assert cluster.client(GIVEN).delete("/api/join-tokens/nope").status_code == 404


def test_the_roots_routes_need_the_roots_token_and_views_stay_open(cluster: Cluster) -> None:
    for method, path in (("POST", "/api/service/s1/0"), ("DELETE", "/api/service/s1/0"),
                         ("POST", "/api/plan"), ("POST", "/api/models/profile")):
        for token in (None, GIVEN, "x" * 30):
            _unauthorized(cluster.client(token).open(path, method=method, json={}))
        # with the root's token the request reaches validation (400/404, not 401)
        assert cluster.client(ROOT_TOKEN).open(path, method=method, json={}).status_code in (400, 404)
    for path in ("/api/health", "/status", "/api/nodes"):
        assert cluster.client().get(path).status_code == 200
    assert cluster.client().get("/api/deployments/s1/0").status_code == 404


def test_artifacts_need_a_join_token_or_the_roots_token(cluster: Cluster) -> None:
    data = b"partition bytes"
    sha = hashlib.sha256(data).hexdigest()
    cluster.core.artifacts.put(sha, data)
    path = f"/api/artifacts/{sha}"
    for token in (None, "wrong-token-0123456789", GIVEN + "x"):
        assert "join token" in _unauthorized(cluster.client(token).get(path))["message"]
    made = cluster.client(GIVEN).post("/api/join-tokens", json={"name": "rack"}).get_json()
    for token in (GIVEN, made["token"], ROOT_TOKEN):
        answer = cluster.client(token).get(path)
        assert answer.status_code == 200 and answer.data == data
    assert cluster.client(GIVEN).get(f"/api/artifacts/{'0' * 64}").status_code == 404
    assert cluster.client(GIVEN).delete(f"/api/join-tokens/{made['token_id']}").status_code == 200
    _unauthorized(cluster.client(made["token"]).get(path))  # a revoked token downloads nothing


def test_without_an_access_every_route_stays_open(tmp_path: Path) -> None:
    made = Cluster(tmp_path)
    open_app = create_app(made.core)
    answer = open_app.test_client().post("/api/node/register", json=REG)
    assert answer.status_code == 200 and "mqtt_password" not in answer.get_json()
    assert open_app.test_client().post("/api/join-tokens").status_code == 404
    made.core.artifacts.put(hashlib.sha256(b"x").hexdigest(), b"x")
    assert open_app.test_client().get(f"/api/artifacts/{hashlib.sha256(b'x').hexdigest()}").data == b"x"
    no_join = create_app(made.core, access=ClusterAccess(root_token=ROOT_TOKEN))  # no join tokens: open
    assert no_join.test_client().get(f"/api/artifacts/{hashlib.sha256(b'x').hexdigest()}").status_code == 200


# ---------------------------------------------------------------- root: cluster identity

SECRET = "unit-test-signing-key-0123456789abcdef"
STATIC = "static-cluster-token-0123456789"


class Remembering(ClusterClient):
    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}

    def remember_token(self, cluster_url: str, token: str) -> None:
        self.tokens[cluster_url] = token

    def deploy(self, cluster_url: str, service_id: str, instance: int, job: dict[str, Any]) -> None:
        raise AssertionError

    def undeploy(self, cluster_url: str, service_id: str, instance: int) -> None:
        raise AssertionError

    def plan(self, cluster_url: str, job: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError

    def profile(self, cluster_url: str, request: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError


@pytest.fixture
def root(mongo_url: str) -> Iterator[Any]:
    stores = open_stores(mongo_url)
    security = SecurityConfig.build(jwt_secret=SECRET, host="127.0.0.1", cluster_tokens=[STATIC],
                                    allow_anonymous_internal=False)
    clusters = Remembering()
    app = create_root_app(stores, FakeClock(), clusters, public_url="http://root.test", security=security)
    admin = stores.users.create_user("boss", hash_password("boss-password"), ["admin"], 0.0)
    admin_token = app.extensions["treeline_auth"].tokens.issue(admin, ACCESS)

    def client(token: str) -> FlaskClient:
        c = app.test_client()
        c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        return c

    def new_token() -> str:
        made = client(admin_token).post("/api/clusters/tokens", json={"name": "t"})
        assert made.status_code == 201
        return str(made.get_json()["token"])

    yield client, new_token, clusters, admin_token
    stores.close()


def _register(client: FlaskClient, url: str, name: str = "cluster-1") -> Any:
    return client.post("/api/clusters/register", json={"cluster_name": name, "url": url})


def test_a_cluster_name_cannot_be_taken_over_by_another_identity_at_another_url(root: Any) -> None:
    client, new_token, clusters, admin_token = root
    first = _register(client(STATIC), "http://10.0.0.1:10100")
    assert first.status_code == 201
    cluster_id = first.get_json()["cluster_id"]
    intruder = new_token()

    taken = _register(client(intruder), "http://10.6.6.6:10100")
    assert taken.status_code == 409
    assert taken.get_json()["error"]["details"] == [{"path": "cluster_name",
                                                     "message": "registered by another identity"}]
    [listed] = client(admin_token).get("/api/clusters/").get_json()
    assert listed["url"] == "http://10.0.0.1:10100"  # the root still sends its jobs there

    # the owner may move; another identity at the owner's URL changes nothing it does not own
    assert _register(client(STATIC), "http://10.0.0.2:10100").get_json()["cluster_id"] == cluster_id
    assert _register(client(intruder), "http://10.0.0.2:10100").status_code == 200
    assert _register(client(intruder), "http://10.6.6.6:10100").status_code == 409
    assert clusters.tokens == {"http://10.0.0.1:10100": STATIC, "http://10.0.0.2:10100": STATIC}
    # a new name is the intruder's own
    assert _register(client(intruder), "http://10.6.6.6:10100", name="cluster-2").status_code == 201
    # the bindings are no tokens: not listed, never accepted
    listed = client(admin_token).get("/api/clusters/tokens").get_json()
    assert all(not t["token_id"].startswith("bind-") for t in listed)


def test_a_name_moves_to_a_new_token_only_at_its_url_after_the_old_one_is_revoked(root: Any) -> None:
    client, new_token, clusters, admin_token = root
    old = new_token()
    assert _register(client(old), "http://edge:1").status_code == 201
    rotated = new_token()
    old_id = old.split("_")[1]
    assert client(admin_token).delete(f"/api/clusters/tokens/{old_id}").status_code == 200
    assert _register(client(rotated), "http://elsewhere:1").status_code == 409  # not from elsewhere
    assert _register(client(rotated), "http://edge:1").status_code == 200  # rotation at its own URL
    assert _register(client(rotated), "http://edge:2").status_code == 200  # now it is rotated's
    assert clusters.tokens["http://edge:2"] == rotated


def test_pushes_teach_the_root_the_token_and_the_client_sends_it(root: Any) -> None:
    client, new_token, clusters, _ = root
    token = new_token()
    cluster_id = _register(client(token), "http://edge:1").get_json()["cluster_id"]
    clusters.tokens.clear()
    push = {"aggregate": {}, "jobs": []}
    assert client(token).post(f"/api/information/{cluster_id}", json=push).status_code == 200
    assert clusters.tokens == {"http://edge:1": token}
    other = new_token()  # a valid token of someone else pushing for this cluster teaches nothing
    clusters.tokens.clear()
    client(other).post(f"/api/information/{cluster_id}", json={"aggregate": {}, "jobs": []})
    assert clusters.tokens == {}

    http = HttpClusterClient(default_token="fallback")
    http.remember_token("http://edge:1/", token)
    assert http._headers("http://edge:1") == {"Authorization": f"Bearer {token}"}
    assert http._headers("http://other:1") == {"Authorization": "Bearer fallback"}
    assert HttpClusterClient(default_token="")._headers("http://other:1") is None


def test_only_the_registering_token_or_an_admin_pushes_for_a_cluster(root: Any) -> None:
    client, new_token, clusters, admin_token = root
    owner, other = new_token(), new_token()
    cluster_id = _register(client(owner), "http://edge:1").get_json()["cluster_id"]
    ok = {"aggregate": {"cpu_percent": 10.0}, "jobs": []}
    assert client(owner).post(f"/api/information/{cluster_id}", json=ok).status_code == 200
    seen = client(admin_token).get(f"/api/clusters/{cluster_id}").get_json()
    clusters.tokens.clear()
    for intruder in (other, STATIC):  # valid cluster tokens that did not register this cluster
        refused = client(intruder).post(f"/api/information/{cluster_id}",
                                        json={"aggregate": {"cpu_percent": 99.0}, "jobs": []})
        assert refused.status_code == 403
        error = refused.get_json()["error"]
        assert error["code"] == "FORBIDDEN"
        assert error["details"] == [{"path": "Authorization",
                                     "message": "not the identity that registered this cluster"}]
    assert clusters.tokens == {}  # nothing learnt, and the push changed nothing
    assert client(admin_token).get(f"/api/clusters/{cluster_id}").get_json() == seen
    # its own cluster stays the other token's to push for
    mine = _register(client(other), "http://edge:2", name="cluster-2").get_json()["cluster_id"]
    assert client(other).post(f"/api/information/{mine}", json=ok).status_code == 200
    assert client(owner).post(f"/api/information/{mine}", json=ok).status_code == 403
    # admins keep access (and teach the root no token)
    assert client(admin_token).post(f"/api/information/{cluster_id}", json=ok).status_code == 200
    assert clusters.tokens == {"http://edge:2": other}
