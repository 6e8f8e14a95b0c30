"""Password hashes (argon2id via argon2-cffi, its default parameters).

Only hashes are stored. :func:`verify` also runs for unknown users (against a fixed dummy
hash) so a login's duration does not reveal whether the name exists.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()
_DUMMY = _HASHER.hash("treeline: no such user")
MIN_LENGTH = 4  # Oakestra's default Admin/Admin must stay possible in development mode


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify(password_hash: str | None, password: str) -> bool:
    """True iff ``password`` matches; ``None`` (no such user) is checked against a dummy hash."""
    try:
        return bool(_HASHER.verify(password_hash or _DUMMY, password)) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
