"""``login``, ``logout`` and ``admin create``: credentials for the root.

``treeline login`` asks the root for a token (``POST /api/auth/login``) and saves it with its
refresh token for that root URL (see :mod:`treeline_cli.root_client`); every later command
sends it. ``treeline admin create`` makes an admin account directly in a root's store (the
root's data directory, or its store URL): how the first admin of a production root is made,
since such a root has no default account. It needs the filesystem access an operator of that
root has, and works while the root runs.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from root_orchestrator.auth import AuthService, SecurityConfig
from root_orchestrator.auth.principals import Role
from root_orchestrator.stores import open_stores
from treeline_cli import root_client as rc
from treeline_cli.commands.common import (
    output,
    output_option,
    root_options,
    root_url,
    setting,
    settings,
    verbose_option,
)
from treeline_cli.errors import Failure, TreelineGroup
from treeline_common.clock import SystemClock
from treeline_common.mongo_server import ROOT_DATABASE, database_url, running_url, start_mongo_server


def _password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True)
    if not password:
        raise Failure("empty password", "give it on stdin with --password-stdin, or type it at the prompt")
    return password


@click.command()
@click.option("--username", "-u", required=True, help="the account to log in as")
@click.option("--password-stdin", is_flag=True, help="read the password from the first line of stdin")
@output_option
@root_options
def login(username: str, password_stdin: bool) -> None:
    """Log in to the root and save the token for later commands."""
    url = root_url()
    tokens = rc.login(url, username, _password(password_stdin))
    path = rc.save_credentials(url, {"username": username, "token": tokens["token"],
                                          "refresh_token": tokens.get("refresh_token")})
    out = output()
    if out.structured:
        out.document({"root_url": url, "username": username, "credentials": str(path)})
    else:
        out.line(f"Logged in to {url} as {username} (token saved in {path})")


@click.command()
@root_options
def logout() -> None:
    """Forget the token saved for the root."""
    url = root_url()
    rc.save_credentials(url, None)
    output().line(f"Logged out of {url}")


@click.group(cls=TreelineGroup)
def admin() -> None:
    """Accounts made directly in a root's store (the first admin of a production root)."""


@admin.command("create")
@click.option("--username", "-u", required=True)
@click.option("--password-stdin", is_flag=True, help="read the password from the first line of stdin")
@click.option("--root-data-dir", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="the root's --data-dir (default: <data_dir>/root, where `treeline up` puts it)")
@click.option("--store-url", default=None, metavar="URL",
              help="the root's --store-url instead (e.g. mongodb://host:27017/treeline)")
@setting("data_dir", metavar="DIR")
@output_option
@verbose_option
def admin_create(username: str, password_stdin: bool, root_data_dir: Path | None,
                 store_url: str | None) -> None:
    """Create an admin account in the root's store (refused if the name is taken)."""
    password = _password(password_stdin)
    with root_store(store_url, root_data_dir or settings().data_dir / "root", settings().data_dir) as url:
        doc = _create_admin(url, username, password)
    out = output()
    if out.structured:
        out.document({"user_id": doc["user_id"], "username": doc["username"], "roles": doc["roles"]})
    else:
        out.line(f"Created admin {doc['username']} ({doc['user_id']}); "
                 f"log in with `treeline login -u {username}`")


@contextlib.contextmanager
def root_store(store_url: str | None, root_data_dir: Path, data_dir: Path) -> Iterator[str]:
    """The root's store URL: ``store_url``; else the embedded MongoDB of a root run alone
    (``<root data dir>/mongo``) or of ``treeline up`` (``<data_dir>/mongo``) while it runs; else,
    for a root run alone that is stopped, its embedded server started for the time of the command."""
    if store_url:
        yield store_url
        return
    for folder in (root_data_dir / "mongo", data_dir / "mongo"):
        url = running_url(folder)
        if url:
            yield database_url(url, ROOT_DATABASE)
            return
    if not (root_data_dir / "mongo" / "db").is_dir():
        raise Failure(f"no root store under {root_data_dir} (and no running `treeline up` under {data_dir})",
                      "pass the root's --data-dir as --root-data-dir, or its --store-url")
    server = start_mongo_server(root_data_dir / "mongo")
    try:
        yield server.db_url(ROOT_DATABASE)
    finally:
        server.stop()


def _create_admin(store_url: str, username: str, password: str) -> dict[str, Any]:
    stores = open_stores(store_url)
    try:
        # the signing key is not needed to create an account: a throwaway one keeps the store the only I/O
        service = AuthService(stores.users, SystemClock(), SecurityConfig(jwt_secret="-" * 32))
        return service.create_user(username, password, [Role.ADMIN.value])
    finally:
        stores.close()
