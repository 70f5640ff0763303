"""User-facing errors.

Anything a user can fix (a missing file, a wrong column, a bad config value) raises a
:class:`UserError`; the command line prints its message as one line and exits non-zero
without a traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; its message is the whole story, on one line."""

    exit_code = 2


class ConfigError(UserError):
    """A config value is wrong: the message names the full key and the allowed values."""


class DataSourceError(UserError):
    """A source file is missing or structurally wrong (file, column, delimiter)."""
