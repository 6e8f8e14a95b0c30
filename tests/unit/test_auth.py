"""The root's security through Flask's test client: tokens, roles, tenants, cluster tokens, modes.

Users are made in the store with cached argon2 hashes and get tokens issued directly (argon2
takes ~0.2 s a hash); the login route itself is tested with real passwords.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from flask.testing import FlaskClient
from test_root_api import SECRET, Root, _error, ml_sla, tiny_onnx

from root_orchestrator.api.guard import access_of
from root_orchestrator.auth import AuthService, SecurityConfig, Unauthorized
from root_orchestrator.auth.principals import Access
from root_orchestrator.auth.settings import is_loopback, load_jwt_secret
from root_orchestrator.auth.tokens import ACCESS, REFRESH
from root_orchestrator.openapi import openapi_path
from root_orchestrator.stores import open_stores
from treeline_common.errors import InvalidInput

PUBLIC_ROUTES = {("GET", "/api/health"), ("GET", "/api/openapi.json"), ("GET", "/api/docs"),
                 ("POST", "/api/auth/login"), ("POST", "/api/auth/refresh"),
                 # the web UI's page and files hold no data (it signs in like any client)
                 ("GET", "/"), ("GET", "/ui"), ("GET", "/ui/static/<path:name>"), ("GET", "/ui/examples/<name>")}


@pytest.fixture
def root(mongo_url: str) -> Iterator[Root]:
    stores = open_stores(mongo_url)
    yield Root(stores)
    stores.close()


def _sample(rule: str) -> str:
    """A concrete path for a Flask rule (any value: the guard answers before the view looks)."""
    return re.sub(r"<(?:(\w+):)?(\w+)>", lambda m: "1" if m.group(1) == "int" else "x" * 64, rule)


def _served(root: Root) -> list[tuple[str, str, Access | None]]:
    return [(method, rule.rule, access_of(root.app.view_functions[rule.endpoint]))
            for rule in root.app.url_map.iter_rules()
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})]


# -- every route -----------------------------------------------------------------------------------------

def test_every_route_declares_access_and_refuses_a_caller_without_token(root: Root) -> None:
    anonymous = root.client()
    served = _served(root)
    assert len(served) > 40
    for method, rule, rule_access in served:
        assert rule_access is not None, f"{method} {rule} declares no access rule"
        assert rule_access.public == ((method, rule) in PUBLIC_ROUTES), (method, rule)
        if rule_access.public:
            continue
        for token in (None, "not-a-token", "Basic YWRtaW46YWRtaW4="):
            client = anonymous if token is None else root.client()
            if token is not None:
                client.environ_base["HTTP_AUTHORIZATION"] = token if " " in token else f"Bearer {token}"
            r = client.open(_sample(rule), method=method, json={})
            err = _error(r, 401, "UNAUTHORIZED")
            assert err["details"][0]["path"] == "Authorization", (method, rule, err)
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert root.stores.applications.list_applications() == []  # nothing ran


def test_public_routes_answer_without_token(root: Root) -> None:
    anonymous = root.client()
    assert anonymous.get("/api/health").get_json()["status"] == "ok"
    assert anonymous.get("/api/openapi.json").status_code == 200
    page = anonymous.get("/api/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert b'fetch("openapi.json")' in page.data
    assert b"http" not in page.data.split(b"<script>")[1].split(b"fetch")[0]  # no CDN


def test_openapi_declares_bearer_security_per_route(root: Root) -> None:
    doc = root.client().get("/api/openapi.json").get_json()
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for method, rule, rule_access in _served(root):
        assert rule_access is not None
        op = doc["paths"][openapi_path(rule)][method.lower()]
        assert op["security"] == ([] if rule_access.public else [{"bearer": []}]), (method, rule)
        assert op["x-treeline-access"] == rule_access.summary
        if not rule_access.public:
            assert {"401", "403"} <= set(op["responses"])


# -- login, refresh, expiry, forgery ---------------------------------------------------------------------

def test_login_and_refresh_in_oakestras_shape(root: Root) -> None:
    root.add_user("alice")
    anonymous = root.client()
    r = anonymous.post("/api/auth/login", json={"username": "alice", "password": "alice-password"})
    assert r.status_code == 200 and set(r.get_json()) == {"token", "refresh_token"}
    tokens = r.get_json()
    assert root.client(tokens["token"]).get("/api/applications").get_json() == []
    refreshed = root.client(tokens["refresh_token"]).post("/api/auth/refresh")
    assert refreshed.status_code == 200 and set(refreshed.get_json()) == {"token"}
    assert root.client(refreshed.get_json()["token"]).get("/api/applications/").status_code == 200
    in_body = anonymous.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert in_body.status_code == 200
    # a refresh token is no access token, and the other way round
    _error(root.client(tokens["refresh_token"]).get("/api/applications/"), 401, "UNAUTHORIZED")
    _error(root.client(tokens["token"]).post("/api/auth/refresh"), 401, "UNAUTHORIZED")


def test_wrong_password_or_unknown_user_is_the_same_401(root: Root) -> None:
    root.add_user("alice")
    anonymous = root.client()
    wrong = _error(anonymous.post("/api/auth/login", json={"username": "alice", "password": "nope"}),
                   401, "UNAUTHORIZED")
    unknown = _error(anonymous.post("/api/auth/login", json={"username": "mallory", "password": "nope"}),
                     401, "UNAUTHORIZED")
    assert wrong == unknown
    _error(anonymous.post("/api/auth/login", json={"username": "alice"}), 401, "UNAUTHORIZED")
    _error(anonymous.post("/api/auth/login", data=b"{", content_type="application/json"),
           400, "INVALID_INPUT")


def test_expired_tokens_are_refused_and_refresh_renews(root: Root) -> None:
    alice = root.add_user("alice")
    access, refresh = root.auth.tokens.issue(alice, ACCESS), root.auth.tokens.issue(alice, REFRESH)
    assert root.client(access).get("/api/applications/").status_code == 200
    root.clock.advance(root.security.access_ttl_s + 1)
    err = _error(root.client(access).get("/api/applications/"), 401, "UNAUTHORIZED")
    assert err["details"][0]["message"] == "token expired"
    renewed = root.client(refresh).post("/api/auth/refresh").get_json()["token"]
    assert root.client(renewed).get("/api/applications/").status_code == 200
    root.clock.advance(root.security.refresh_ttl_s)
    _error(root.client(refresh).post("/api/auth/refresh"), 401, "UNAUTHORIZED")


def test_forged_tokens_are_refused(root: Root) -> None:
    alice = root.add_user("alice")
    good = root.auth.tokens.issue(alice, ACCESS)
    claims = jwt.decode(good, SECRET, algorithms=["HS256"],
                        options={"verify_exp": False, "verify_iat": False})
    admin_claims = {**claims, "sub": root.admin["user_id"], "name": root.admin["username"]}
    forged = {
        "other key": jwt.encode(admin_claims, "another-signing-key-0123456789abcdef", algorithm="HS256"),
        "alg none": jwt.encode(admin_claims, None, algorithm="none"),
        "tampered payload": ".".join([good.split(".")[0], jwt.encode(admin_claims, "k" * 32).split(".")[1],
                                      good.split(".")[2]]),
        "garbage": "a.b.c",
        "unknown cluster token": "tlc_0123456789ab_secret",
    }
    for what, token in forged.items():
        err = _error(root.client(token).get("/api/users/"), 401, "UNAUTHORIZED")
        assert err["details"][0]["path"] == "Authorization", what


def test_deleted_user_and_changed_password_revoke_tokens(root: Root) -> None:
    alice, bob = root.add_user("alice"), root.add_user("bob")
    alice_token, bob_token = root.token(alice), root.token(bob)
    r = root.http.put(f"/api/users/{alice['user_id']}", json={"password": "a-new-password"})
    assert r.status_code == 200 and "password_hash" not in r.get_json()
    err = _error(root.client(alice_token).get("/api/applications/"), 401, "UNAUTHORIZED")
    assert "password" in err["details"][0]["message"]
    assert root.http.delete("/api/users/bob").status_code == 200
    _error(root.client(bob_token).get("/api/applications/"), 401, "UNAUTHORIZED")


# -- users: admin only ------------------------------------------------------------------------------------

def test_users_crud_is_admin_only(root: Root) -> None:
    provider = root.login_as(root.add_user("alice"))
    infra = root.login_as(root.add_user("ivan", "infrastructure_provider"))
    cluster = root.cluster_client()
    for client in (provider, infra, cluster):
        for method, path in (("GET", "/api/users/"), ("POST", "/api/users/"), ("GET", "/api/users/alice"),
                             ("PUT", "/api/users/alice"), ("DELETE", "/api/users/alice")):
            _error(client.open(path, method=method, json={"password": "x" * 8}), 403, "FORBIDDEN")
    r = root.http.post("/api/users/", json={"name": "carol", "password": "carol-pw",
                                            "roles": ["Application_Provider"]})  # Oakestra's spellings
    assert r.status_code == 201
    carol = r.get_json()
    assert carol["roles"] == ["application_provider"] and "password_hash" not in carol
    assert [u["username"] for u in root.http.get("/api/users").get_json()] == ["root-admin", "alice", "ivan",
                                                                               "carol"]
    assert root.http.get(f"/api/users/{carol['user_id']}").get_json()["username"] == "carol"
    assert root.http.put("/api/users/carol", json={"roles": ["admin"]}).get_json()["roles"] == ["admin"]
    _error(root.http.post("/api/users/", json={"username": "carol", "password": "xxxxxx"}), 409, "CONFLICT")
    _error(root.http.post("/api/users/", json={"username": "dave", "password": "x"}), 400, "INVALID_INPUT")
    _error(root.http.post("/api/users/", json={"username": "dave", "password": "xxxxxx", "roles": ["root"]}),
           400, "INVALID_INPUT")
    _error(root.http.put("/api/users/carol", json={"username": "eve"}), 400, "INVALID_INPUT")
    _error(root.http.delete("/api/users/root-admin"), 409, "CONFLICT")  # never oneself
    _error(root.http.put("/api/users/root-admin", json={"roles": ["application_provider"]}), 409, "CONFLICT")
    assert root.http.delete("/api/users/carol").status_code == 200
    _error(root.http.get("/api/users/carol"), 404, "NOT_FOUND")


def test_roles_gate_routes(root: Root) -> None:
    infra = root.login_as(root.add_user("ivan", "infrastructure_provider"))
    provider = root.login_as(root.add_user("alice"))
    _error(infra.get("/api/applications/"), 403, "FORBIDDEN")  # infrastructure providers run no apps
    registered = infra.post("/api/clusters/register", json={"cluster_name": "c", "url": "http://c:1"})
    assert registered.status_code == 201
    _error(provider.post("/api/clusters/register", json={"cluster_name": "c", "url": "http://c:1"}),
           403, "FORBIDDEN")
    _error(provider.post("/api/clusters/tokens", json={}), 403, "FORBIDDEN")
    assert provider.get("/api/clusters").status_code == 200  # anyone with a token sees the clusters


# -- tenants: 404 for other users' objects ----------------------------------------------------------------

def test_tenant_isolation_user_b_gets_404_for_everything_of_user_a(root: Root) -> None:
    alice_user, bob_user = root.add_user("alice"), root.add_user("bob")
    alice, bob = root.login_as(alice_user), root.login_as(bob_user)
    root.register_cluster("a", "http://a:1")
    r = alice.post("/api/models/tiny/versions", data=tiny_onnx(), content_type="application/octet-stream")
    assert r.status_code == 201 and r.get_json()["owner"] == alice_user["user_id"]
    [app] = alice.post("/api/application/", json=ml_sla()).get_json()
    app_id, [sid] = app["applicationID"], app["microservices"]
    assert app["userId"] == alice_user["user_id"]
    deployed = alice.post(f"/api/service/{sid}/instance")
    assert deployed.status_code == 200, deployed.get_json()
    number = deployed.get_json()["instance"]
    sha = r.get_json()["sha256"]
    for method, path in [
            ("GET", f"/api/application/{app_id}"), ("PUT", f"/api/application/{app_id}"),
            ("DELETE", f"/api/application/{app_id}"), ("GET", f"/api/services/{app_id}"),
            ("GET", f"/api/services/?application_id={app_id}"), ("GET", f"/api/service/{sid}"),
            ("GET", f"/api/service/{sid}/events"), ("DELETE", f"/api/service/{sid}"),
            ("POST", f"/api/service/{sid}/instance"), ("DELETE", f"/api/service/{sid}/instance/{number}"),
            ("GET", "/api/models/tiny/versions"), ("GET", "/api/models/tiny/versions/1"),
            ("GET", "/api/models/tiny/versions/latest/artifact"), ("PUT", "/api/models/tiny/aliases/prod"),
            ("DELETE", "/api/models/tiny"), ("GET", "/api/models/tiny/versions/1/profiles"),
            ("GET", "/api/models/tiny/versions/1/profiles/server"),
            ("PUT", "/api/models/tiny/versions/1/profiles/server"),
            ("DELETE", "/api/models/tiny/versions/1/profiles"),
            ("POST", "/api/models/tiny/versions/1/profile"),
            ("GET", f"/api/applications/{alice_user['user_id']}")]:
        body = {"application_name": "stolen", "version": 1, "op_ms": {}}
        _error(bob.open(path, method=method, json=body), 404, "NOT_FOUND")
    assert bob.get("/api/applications/").get_json() == []
    assert bob.get("/api/services/").get_json() == []
    assert bob.get("/api/models/").get_json() == {"models": []}
    # bob cannot take the model's name, nor deploy it from his own SLA
    taken = bob.post("/api/models/tiny/versions", data=tiny_onnx(), content_type="application/octet-stream")
    _error(taken, 409, "CONFLICT")
    [bobs] = bob.post("/api/application/", json=ml_sla()).get_json()  # same app name, other user: fine
    err = _error(bob.post(f"/api/service/{bobs['microservices'][0]}/instance"), 404, "NOT_FOUND")
    assert err["details"][0]["path"] == "model.name"
    plan = _error(bob.post("/api/plan", json=ml_sla()), 404, "NOT_FOUND")
    assert plan["details"][0]["path"].endswith("model.name")
    # nothing of alice's changed; alice and the admin see her objects, the admin sees both users'
    assert alice.get(f"/api/application/{app_id}").get_json()["application_name"] == "vision"
    assert alice.get(f"/api/service/{sid}/events").status_code == 200
    assert [i["instance"] for i in alice.get(f"/api/service/{sid}").get_json()["instances"]] == [number]
    assert {a["applicationID"] for a in root.http.get("/api/applications/").get_json()} == {
        app_id, bobs["applicationID"]}
    assert root.http.get(f"/api/service/{sid}").status_code == 200
    [listed] = root.http.get(f"/api/applications/{alice_user['user_id']}").get_json()
    assert listed["applicationID"] == app_id
    assert [m["name"] for m in root.http.get("/api/models/").get_json()["models"]] == ["tiny"]
    # clusters read any model's profiles and artifacts (they deploy every user's services)
    cluster = root.cluster_client()
    assert cluster.get("/api/models/tiny/versions/1/profiles").status_code == 200
    assert cluster.get(f"/api/artifacts/{sha}").status_code == 200
    _error(alice.get(f"/api/artifacts/{sha}"), 403, "FORBIDDEN")  # users download through their models


def test_same_name_twice_is_409_and_rename_checks_names(root: Root) -> None:
    [first] = root.http.post("/api/application", json=ml_sla()).get_json()
    err = _error(root.http.post("/api/application/", json=ml_sla()), 409, "CONFLICT")
    assert err["details"][0]["path"] == "applications[0].application_name"
    other = ml_sla()
    other["applications"][0]["application_name"] = "other"
    [second] = root.http.post("/api/application/", json=other).get_json()
    _error(root.http.put(f"/api/application/{second['applicationID']}", json={"application_name": "vision"}),
           409, "CONFLICT")
    _error(root.http.put(f"/api/application/{second['applicationID']}",
                         json={"application_name": "no spaces"}), 400, "INVALID_INPUT")
    r = root.http.put(f"/api/application/{second['applicationID']}/",
                      json={"application_name": "renamed", "application_desc": "d", "applicationID": "x"})
    assert r.status_code == 200
    assert (r.get_json()["application_name"], r.get_json()["applicationID"]) == (
        "renamed", second["applicationID"])
    assert root.http.get(f"/api/application/{first['applicationID']}/").status_code == 200


# -- Oakestra's paths and shapes --------------------------------------------------------------------------

def test_oakestra_routes_with_and_without_trailing_slash(root: Root) -> None:
    cid = root.register_cluster("a", "http://a:1", active_nodes=1)
    root.register_model()
    sid = root.submit()
    app_id = root.http.get(f"/api/service/{sid}").get_json()["application_id"]
    for path in ("/api/applications", f"/api/services/{app_id}", "/api/clusters", "/api/clusters/active"):
        plain, slashed = root.http.get(path), root.http.get(path + "/")
        assert plain.status_code == slashed.status_code == 200, path
        assert plain.get_json() == slashed.get_json() and isinstance(plain.get_json(), list), path
        assert plain.get_json()[0]["_id"]["$oid"], path
    assert root.http.get("/api/clusters/active").get_json()[0]["cluster_id"] == cid
    assert root.http.get(f"/api/service/{sid}/").get_json()["microserviceID"] == sid
    deployed = root.http.post(f"/api/service/{sid}/instance/")
    assert deployed.status_code == 200  # Oakestra's CLI accepts only 200
    number = deployed.get_json()["instance"]
    assert root.http.delete(f"/api/service/{sid}/instance/{number}/").status_code == 200
    root.clock.advance(600)  # past the active window, within the token's hour
    assert root.http.get("/api/clusters/active").get_json() == []
    gone = root.http.delete(f"/api/application/{app_id}/")
    assert gone.status_code == 200 and gone.get_json()["message"] == "Application Deleted"


# -- clusters: tokens and the development-mode fallback ---------------------------------------------------

def test_cluster_tokens_are_shown_once_and_revocable(root: Root) -> None:
    infra_user = root.add_user("ivan", "infrastructure_provider")
    infra = root.login_as(infra_user)
    r = infra.post("/api/clusters/tokens", json={"name": "edge"})
    assert r.status_code == 201
    made = r.get_json()
    token, token_id = made["token"], made["token_id"]
    assert made["owner"] == infra_user["user_id"] and "secret_sha256" not in made
    listed = infra.get("/api/clusters/tokens").get_json()
    assert [t["token_id"] for t in listed] == [token_id] and "token" not in listed[0]
    cluster = root.client(token)
    cid = cluster.post("/api/clusters/register", json={"cluster_name": "c", "url": "http://c:1"}).get_json()
    push = cluster.post(f"/api/information/{cid['cluster_id']}", json={"aggregate": {}, "jobs": []})
    assert push.status_code == 200
    assert cluster.get("/api/clusters/").status_code == 200
    _error(cluster.get("/api/applications/"), 403, "FORBIDDEN")  # a cluster is no application user
    _error(cluster.post("/api/clusters/tokens"), 403, "FORBIDDEN")  # nor makes tokens
    _error(root.login_as(root.add_user("jo", "infrastructure_provider")).delete(
        f"/api/clusters/tokens/{token_id}"), 404, "NOT_FOUND")  # another provider's token
    assert infra.delete(f"/api/clusters/tokens/{token_id}").status_code == 200
    _error(cluster.get("/api/clusters/"), 401, "UNAUTHORIZED")
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    _error(root.client(tampered).get("/api/clusters/"), 401, "UNAUTHORIZED")


def test_preseeded_cluster_token(mongo_url: str) -> None:
    security = SecurityConfig.build(jwt_secret=SECRET, host="127.0.0.1", cluster_tokens=["s" * 20],
                                    allow_anonymous_internal=False)
    root = Root(open_stores(mongo_url), security=security)
    try:
        assert root.client("s" * 20).post("/api/clusters/register",
                                          json={"cluster_name": "c", "url": "http://c:1"}).status_code == 201
        _error(root.client("s" * 19).get("/api/clusters/"), 401, "UNAUTHORIZED")
        _error(root.client().post("/api/clusters/register", json={"cluster_name": "c", "url": "http://c:1"}),
               401, "UNAUTHORIZED")
    finally:
        root.stores.close()


def test_internal_routes_without_token_only_in_development_on_loopback(
        mongo_url: str, caplog: pytest.LogCaptureFixture) -> None:
    register = {"cluster_name": "c", "url": "http://c:1"}
    dev = Root(open_stores(f"{mongo_url}_dev"),
               security=SecurityConfig.build(jwt_secret=SECRET, host="127.0.0.1"))
    prod = Root(open_stores(f"{mongo_url}_prod"),
                security=SecurityConfig.build(jwt_secret=SECRET, host="127.0.0.1", production=True))
    try:
        anonymous = dev.client()
        with caplog.at_level("WARNING"):
            assert anonymous.post("/api/clusters/register", json=register).status_code == 201
            assert anonymous.post("/api/clusters/register", json=register).status_code == 200
        assert sum("without a token" in r.getMessage() for r in caplog.records) == 1  # warned once
        assert anonymous.get("/api/clusters/").get_json()["clusters"][0]["cluster_name"] == "c"  # old shape
        for path in ("/api/applications/", "/api/users/", "/api/models/"):
            _error(anonymous.get(path), 401, "UNAUTHORIZED")  # user routes always need a token
        remote = dev.app.test_client()
        remote.environ_base["REMOTE_ADDR"] = "10.1.2.3"
        _error(remote.post("/api/clusters/register", json=register), 401, "UNAUTHORIZED")
        _error(prod.client().post("/api/clusters/register", json=register), 401, "UNAUTHORIZED")
    finally:
        dev.stores.close()
        prod.stores.close()


# -- modes ------------------------------------------------------------------------------------------------

def test_default_admin_only_in_development_mode(mongo_url: str) -> None:
    assert SecurityConfig.build(jwt_secret=SECRET, host="0.0.0.0").production  # non-loopback: production
    assert not SecurityConfig.build(jwt_secret=SECRET, host="0.0.0.0").anonymous_internal
    assert not SecurityConfig.build(jwt_secret=SECRET, host="localhost").production
    assert (is_loopback("127.0.0.5"), is_loopback("::1"), is_loopback("10.0.0.1")) == (True, True, False)
    stores = open_stores(mongo_url)
    try:
        prod = AuthService(stores.users, Root(stores).clock,
                           SecurityConfig.build(jwt_secret=SECRET, host="127.0.0.1", production=True))
        stores.users.delete_user(stores.users.find_user("root-admin")["user_id"])  # type: ignore[index]
        assert prod.ensure_default_admin() is False and stores.users.count_users() == 0
        with pytest.raises(Unauthorized):
            prod.login("Admin", "Admin")
        dev = AuthService(stores.users, prod.clock, SecurityConfig.build(jwt_secret=SECRET, host="127.0.0.1"))
        assert dev.ensure_default_admin() is True and dev.ensure_default_admin() is False
        assert set(dev.login("Admin", "Admin")) == {"token", "refresh_token"}
        assert stores.users.find_user("Admin")["roles"] == ["admin"]  # type: ignore[index]
    finally:
        stores.close()


def test_jwt_secret_from_env_or_generated_once(tmp_path: Path) -> None:
    first = load_jwt_secret(tmp_path, {})
    assert len(first) >= 32 and load_jwt_secret(tmp_path, {}) == first  # kept across restarts
    assert (tmp_path / "jwt_secret").stat().st_mode & 0o077 == 0
    assert load_jwt_secret(tmp_path, {"TREELINE_JWT_SECRET": "e" * 40}) == "e" * 40
    with pytest.raises(InvalidInput):
        load_jwt_secret(tmp_path, {"TREELINE_JWT_SECRET": "short"})


def test_auth_overhead_is_small(root: Root) -> None:
    """A guarded request costs little more than a public one (no argon2 per request)."""
    user = root.login_as(root.add_user("alice"))
    public = root.client()

    def p50(client: FlaskClient, path: str) -> float:
        times = []
        for _ in range(30):
            start = time.perf_counter()
            assert client.get(path).status_code == 200
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    assert p50(user, "/api/clusters/") < p50(public, "/api/health") + 0.02
