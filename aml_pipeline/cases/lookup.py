"""Who a call names: a user given by id, name or view, as the ORM row (one place, used by
the decisions, the users' own functions and the audit trail)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from aml_pipeline.cases.errors import NotFound, PermissionDenied
from aml_pipeline.cases.models import User


def resolve_user(session: Session, user: Any, *, require_active: bool = True) -> User:
    """The ORM user for an id, a username or a :class:`UserView`; NotFound / PermissionDenied."""
    key = getattr(user, "id", user)
    if isinstance(key, int) and not isinstance(key, bool):
        found = session.get(User, key)
    elif isinstance(key, str):
        found = session.scalar(sa.select(User).where(User.username == key))
    else:
        raise NotFound(f"user {user!r}: give an id, a username or a user")
    if found is None:
        raise NotFound(f"no user {key!r}")
    if require_active and not found.active:
        raise PermissionDenied(f"user {found.username!r} is deactivated")
    return found
