"""``task=users``: the workbench's users, from the command line.

``users.action``: ``add`` (a new user ``users.name`` with ``users.role``), ``password`` (a
new password), ``deactivate`` / ``activate`` (a deactivated user cannot log in or act, and
stays in the audit trail), ``list``. Every change is audited (by the system user).

The password is read from the environment variable named by ``users.password_env``
(default ``AML_WORKBENCH_PASSWORD``) or, at a terminal, asked for twice; never from the
command line or the config, which end up in shell histories, logs and run records.
"""

from __future__ import annotations

import getpass
import os
import sys

from omegaconf import DictConfig

from aml_pipeline.cases import create_user, list_users, set_active, set_password
from aml_pipeline.config import option_value
from aml_pipeline.errors import ConfigError, UserError
from aml_pipeline.progress import table
from aml_pipeline.tasks.cases import open_case_db

def read_password(env_name: str, username: str) -> str:
    """The new password: from the environment, else typed twice at a terminal."""
    password = os.environ.get(env_name)
    if password:
        return password
    if not sys.stdin.isatty():
        raise UserError(f"task=users: set the password in the environment variable {env_name} "
                        "(or run at a terminal to type it)")
    first = getpass.getpass(f"{username}'s password: ")
    if getpass.getpass("again: ") != first:
        raise UserError("task=users: the two passwords differ")
    return first


def run(cfg: DictConfig) -> dict:
    u = cfg.users
    action = str(option_value(u.action))
    if action != "list" and not u.name:
        raise ConfigError(f"task=users users.action={action} needs users.name=<user name>")
    db = open_case_db(cfg)
    try:
        if action == "list":
            users = list_users(db)
            table("users", [(v.username, f"{v.role}{'' if v.active else ', deactivated'}") for v in users]
                  or [("(none)", "task=users users.name=NAME users.role=analyst|supervisor adds one")])
            return {"users": [{"name": v.username, "role": v.role, "active": v.active} for v in users]}
        if action == "add":
            view = create_user(db, u.name, read_password(u.password_env, u.name), str(option_value(u.role)))
        elif action == "password":
            view = set_password(db, u.name, read_password(u.password_env, u.name))
        else:
            view = set_active(db, u.name, action == "activate")
    finally:
        db.close()
    table("users", [(view.username, f"{view.role}{'' if view.active else ', deactivated'}"), ("done", action)])
    return {"name": view.username, "role": view.role, "active": view.active, "action": action}
