"""``task=users``: the workbench's users from the command line, as an administrator runs it.

The password comes from the environment (never the command line); a wrong request is one
line and exit code 2; a deactivated user can no longer log in; the case database records
every change.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException

from aml_pipeline.cases import audit_trail, authenticate, open_db
from aml_pipeline.errors import UserError
from aml_pipeline.tasks import run_task
from tests.conftest import ROOT, cli_env, compose_config

PASSWORD = "correct horse battery"


def users(tmp_path, *args: str, password: str | None = PASSWORD) -> subprocess.CompletedProcess:
    env = {**cli_env(), "PYTHONPATH": str(ROOT)}
    env.pop("AML_WORKBENCH_PASSWORD", None)
    if password is not None:
        env["AML_WORKBENCH_PASSWORD"] = password
    return subprocess.run([sys.executable, "-m", "aml_pipeline", "task=users", f"cases.db=sqlite:///{tmp_path}/cases.db",
                           *args], cwd=tmp_path, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=300)


def test_users_are_added_listed_refused_and_deactivated(tmp_path, monkeypatch):
    assert users(tmp_path, "users.name=ana").returncode == 0
    sam = users(tmp_path, "users.name=sam", "users.role=supervisor")
    assert sam.returncode == 0, sam.stderr
    listed = users(tmp_path, "users.action=list", password=None)
    assert listed.returncode == 0 and "ana" in listed.stdout and "supervisor" in listed.stdout
    assert PASSWORD not in listed.stdout + sam.stdout + sam.stderr  # the password is never printed
    refused = users(tmp_path, "users.name=bob", password=None)  # no password in the environment, no terminal
    lines = [line for line in refused.stderr.strip().splitlines() if line]
    assert refused.returncode == 2 and len(lines) == 1 and "AML_WORKBENCH_PASSWORD" in lines[0], refused.stderr

    def task(*args: str, password: str | None = PASSWORD):
        if password is None:
            monkeypatch.delenv("AML_WORKBENCH_PASSWORD", raising=False)
        else:
            monkeypatch.setenv("AML_WORKBENCH_PASSWORD", password)
        return run_task(compose_config(["task=users", f"cases.db=sqlite:///{tmp_path}/cases.db", *args]))

    for args, password, message in [
        (["users.name=ana"], PASSWORD, "user 'ana' exists already"),
        (["users.name=bob"], "short", "at least 8 characters"),
        (["users.action=deactivate"], PASSWORD, "needs users.name"),
    ]:
        with pytest.raises(UserError, match=message):
            task(*args, password=password)
    with pytest.raises(ConfigCompositionException):
        task("users.name=bob", "users.role=boss")

    db = open_db(f"sqlite:///{tmp_path}/cases.db")
    try:
        assert authenticate(db, "ana", PASSWORD) is not None and authenticate(db, "bob", PASSWORD) is None
        assert task("users.action=deactivate", "users.name=ana", password=None)["active"] is False
        assert authenticate(db, "ana", PASSWORD) is None
        assert task("users.action=password", "users.name=sam", password="a new long password")["name"] == "sam"
        assert authenticate(db, "sam", "a new long password") is not None and authenticate(db, "sam", PASSWORD) is None
        actions = [e.action for e in audit_trail(db)]
        assert actions.count("user_created") == 2 and len(actions) >= 4
    finally:
        db.close()
