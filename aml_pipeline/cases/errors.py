"""The case database's errors: each is a :class:`~aml_pipeline.errors.UserError` with a
one-line message, and each maps onto one HTTP status for the workbench."""

from __future__ import annotations

from aml_pipeline.errors import UserError


class CaseError(UserError):
    """Base of the case database's errors."""

    http_status = 400


class NotFound(CaseError):
    """No case, alert, disposition or user with that id (HTTP 404)."""

    http_status = 404


class PermissionDenied(CaseError):
    """The user may not do this: wrong role, inactive, or approving their own decision (HTTP 403)."""

    http_status = 403


class InvalidTransition(CaseError):
    """The case's state does not allow this action: deciding a closed case, approving
    without a pending SAR, an unknown decision (HTTP 409)."""

    http_status = 409


class AuditIsAppendOnly(CaseError):
    """Something tried to change or delete an audit entry."""

    http_status = 409
