"""The root's security: who is calling (principals, tokens, passwords) and what they may do.

Pure of Flask: :mod:`.principals` (roles, principals, per-route access), :mod:`.tokens` (JWT
access/refresh tokens and cluster tokens), :mod:`.passwords` (argon2), :mod:`.settings`
(modes and secrets) and :mod:`.service` (login, refresh, authentication over the user store).
The Flask edge is :mod:`root_orchestrator.api.guard`.
"""

from root_orchestrator.auth.errors import Forbidden, Unauthorized
from root_orchestrator.auth.principals import Access, Principal, Role
from root_orchestrator.auth.service import AuthService
from root_orchestrator.auth.settings import SecurityConfig, new_cluster_token

__all__ = ["Access", "AuthService", "Forbidden", "Principal", "Role", "SecurityConfig", "Unauthorized",
           "new_cluster_token"]
