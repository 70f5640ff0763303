"""``task=users``: the workbench's users from the command line, as an administrator runs it.

The password comes from the environment (never the command line); a wrong request is one
line and exit code 2; a deactivated user can no longer log in; the case database records
every change.
"""

from __future__ import annotations

import subprocess
import sys

from aml_pipeline.cases import audit_trail, authenticate, open_db
from tests.conftest import ROOT, cli_env

PASSWORD = "correct horse battery"


def users(tmp_path, *args: str, password: str | None = PASSWORD) -> subprocess.CompletedProcess:
    env = {**cli_env(), "PYTHONPATH": str(ROOT)}
    env.pop("AML_WORKBENCH_PASSWORD", None)
    if password is not None:
        env["AML_WORKBENCH_PASSWORD"] = password
    return subprocess.run([sys.executable, "-m", "aml_pipeline", "task=users", f"cases.db=sqlite:///{tmp_path}/cases.db",
                           *args], cwd=tmp_path, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=300)


def test_users_are_added_listed_refused_and_deactivated(tmp_path):
    assert users(tmp_path, "users.name=ana").returncode == 0
    sam = users(tmp_path, "users.name=sam", "users.role=supervisor")
    assert sam.returncode == 0, sam.stderr
    listed = users(tmp_path, "users.action=list", password=None)
    assert listed.returncode == 0 and "ana" in listed.stdout and "supervisor" in listed.stdout
    assert PASSWORD not in listed.stdout + sam.stdout + sam.stderr  # the password is never printed

    for args, password, message in [
        (["users.name=ana"], PASSWORD, "user 'ana' exists already"),
        (["users.name=bob"], "short", "at least 8 characters"),
        (["users.name=bob"], None, "AML_WORKBENCH_PASSWORD"),
        (["users.action=deactivate"], PASSWORD, "needs users.name"),
        (["users.name=bob", "users.role=boss"], PASSWORD, "expected one of [analyst, supervisor]"),
    ]:
        res = users(tmp_path, *args, password=password)
        lines = [line for line in res.stderr.strip().splitlines() if line]
        assert res.returncode == 2 and len(lines) == 1 and message in lines[0], (args, res.stderr)

    db = open_db(f"sqlite:///{tmp_path}/cases.db")
    try:
        assert authenticate(db, "ana", PASSWORD) is not None and authenticate(db, "bob", PASSWORD) is None
        assert users(tmp_path, "users.action=deactivate", "users.name=ana", password=None).returncode == 0
        assert authenticate(db, "ana", PASSWORD) is None
        assert users(tmp_path, "users.action=password", "users.name=sam", password="a new long password").returncode == 0
        assert authenticate(db, "sam", "a new long password") is not None and authenticate(db, "sam", PASSWORD) is None
        actions = [e.action for e in audit_trail(db)]
        assert actions.count("user_created") == 2 and len(actions) >= 4
    finally:
        db.close()
