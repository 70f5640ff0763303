"""The workbench's users: an ``analyst`` reviews and decides; a ``supervisor`` also
approves or rejects another user's SAR (maker-checker) and assigns cases to anyone.

Passwords are stored only as scrypt hashes (:mod:`aml_pipeline.cases.passwords`).
Every change to a user is audited.
"""

from __future__ import annotations

import re
from typing import Any, Optional

import sqlalchemy as sa

from aml_pipeline.cases.audit import record
from aml_pipeline.cases.db import CaseDB
from aml_pipeline.cases.errors import CaseError
from aml_pipeline.cases.lookup import resolve_user
from aml_pipeline.cases.models import ROLES, User
from aml_pipeline.cases.passwords import hash_password, verify_password
from aml_pipeline.cases.views import UserView

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 8
#: Verified against when the user does not exist, so a missing user costs as long as a wrong password.
_DUMMY_HASH = hash_password("not-a-real-password")


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise CaseError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return role


def _check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise CaseError(f"a password needs at least {MIN_PASSWORD} characters")
    return password


def create_user(db: CaseDB, username: str, password: str, role: str = "analyst", *, actor: Any = None) -> UserView:
    """Add a user (``role``: analyst or supervisor); the password is stored hashed."""
    if not isinstance(username, str) or not USERNAME.match(username):
        raise CaseError(f"username {username!r}: 1-64 letters, digits or . _ @ -, starting with a letter or digit")
    _check_role(role)
    hashed = hash_password(_check_password(password))
    with db.session() as s:
        if s.scalar(sa.select(User.id).where(User.username == username)) is not None:
            raise CaseError(f"user {username!r} exists already")
        by = resolve_user(s, actor) if actor is not None else None
        u = User(username=username, password_hash=hashed, role=role, active=True)
        s.add(u)
        s.flush()
        record(s, "user_created", user=by, entity="user", entity_id=u.id, after={"username": username, "role": role})
        return UserView.of(u)


def authenticate(db: CaseDB, username: str, password: str) -> Optional[UserView]:
    """The user when the password matches and the user is active; None otherwise (the
    caller records the attempt with :func:`~aml_pipeline.cases.audit.log_action`)."""
    if not isinstance(username, str) or not isinstance(password, str):
        return None
    with db.session() as s:
        u = s.scalar(sa.select(User).where(User.username == username))
        if u is None:
            verify_password(password, _DUMMY_HASH)
            return None
        if not verify_password(password, u.password_hash) or not u.active:
            return None
        return UserView.of(u)


def get_user(db: CaseDB, user: Any) -> UserView:
    """A user by id, username or view (NotFound when none; deactivated users are returned)."""
    with db.session() as s:
        return UserView.of(resolve_user(s, user, require_active=False))


def list_users(db: CaseDB) -> list[UserView]:
    with db.session() as s:
        return [UserView.of(u) for u in s.scalars(sa.select(User).order_by(User.username))]


def set_password(db: CaseDB, user: Any, password: str, *, actor: Any = None) -> UserView:
    hashed = hash_password(_check_password(password))
    with db.session() as s:
        u = resolve_user(s, user, require_active=False)
        by = resolve_user(s, actor) if actor is not None else None
        u.password_hash = hashed
        record(s, "password_changed", user=by, entity="user", entity_id=u.id)
        return UserView.of(u)


def set_active(db: CaseDB, user: Any, active: bool, *, actor: Any = None) -> UserView:
    """Deactivate (or reactivate) a user: a deactivated user cannot log in or act."""
    with db.session() as s:
        u = resolve_user(s, user, require_active=False)
        by = resolve_user(s, actor) if actor is not None else None
        before = bool(u.active)
        u.active = bool(active)
        record(s, "user_activated" if active else "user_deactivated", user=by, entity="user", entity_id=u.id,
               before={"active": before}, after={"active": bool(active)})
        return UserView.of(u)
