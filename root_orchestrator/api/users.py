"""Users, for admins only: ``/api/users/`` and ``/api/users/<user>`` (an id or a username).

Bodies: create ``{username, password, roles: [admin|application_provider|infrastructure_provider]}``
(Oakestra's ``name`` and role spellings are accepted); update ``{password?, roles?}``. Answers
never carry password hashes. An admin cannot delete or demote themself, so a root always keeps
the admin who is using it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from root_orchestrator.api.context import ctx
from root_orchestrator.api.guard import access, auth_service, principal
from root_orchestrator.auth.principals import ADMIN, Role
from root_orchestrator.auth.service import parse_roles, public_user
from treeline_common.errors import Conflict, NotFound
from treeline_common.http import json_body

bp = Blueprint("users", __name__)


def _user(ref: str) -> dict[str, Any]:
    """A user by id, else by username; NotFound (path ``user_id``)."""
    users = ctx().stores.users
    try:
        return users.get_user(ref)
    except NotFound:
        found = users.find_user(ref)
        if found is None:
            raise
        return found


@bp.get("/api/users/")
@access(ADMIN)
def list_users() -> Any:
    return jsonify([public_user(u) for u in ctx().stores.users.list_users()])


@bp.post("/api/users/")
@access(ADMIN)
def create_user() -> Any:
    body = json_body(request)
    doc = auth_service().create_user(body.get("username", body.get("name")), body.get("password"),
                                     body.get("roles", [Role.APPLICATION_PROVIDER.value]))
    return jsonify(public_user(doc)), 201


@bp.get("/api/users/<user>")
@access(ADMIN)
def get_user(user: str) -> Any:
    return jsonify(public_user(_user(user)))


@bp.put("/api/users/<user>")
@access(ADMIN)
def update_user(user: str) -> Any:
    doc = _user(user)
    body = json_body(request)
    demoted = "roles" in body and Role.ADMIN.value not in parse_roles(body["roles"])
    if doc["user_id"] == principal().id and demoted:
        raise Conflict("an admin cannot remove their own admin role",
                       [{"path": "roles", "message": "ask another admin"}])
    return jsonify(public_user(auth_service().update_user(doc["user_id"], body)))


@bp.delete("/api/users/<user>")
@access(ADMIN)
def delete_user(user: str) -> Any:
    doc = _user(user)
    if doc["user_id"] == principal().id:
        raise Conflict("an admin cannot delete themself",
                       [{"path": "user_id", "message": "ask another admin"}])
    return jsonify({"deleted": public_user(ctx().stores.users.delete_user(doc["user_id"]))})
