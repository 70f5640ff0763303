"""The case database (aml_pipeline.cases): migrations, users, grouping alerts into cases,
the queue, decisions with maker-checker, and the append-only audit trail.

Every test runs on both engines: SQLite, and a real PostgreSQL server the module starts
itself (Debian's ``postgresql``, which ``.ci/run`` installs), each test in a new database.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import polars as pl
import pytest
import sqlalchemy as sa

from aml_pipeline.cases import (CaseError, InvalidTransition, NotFound, PermissionDenied, approve, assign,
                                audit_trail, authenticate, create_user, decide, facets, get_alert, get_case,
                                ingest_alerts, list_cases, log_action, open_db, reject, set_active)
from aml_pipeline.cases.db import normalise_url
from aml_pipeline.cases.models import Base
from aml_pipeline.errors import UserError

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


def alert(event_id: str, account: str, hours: float, score: float, amount: float = 100.0, jurisdiction: str = "US",
          **extra) -> dict:
    return {"event_id": event_id, "event_time": T0 + timedelta(hours=hours), "src_account": account,
            "dst_account": f"to-{event_id}", "amount": amount, "currency": "USD", "jurisdiction": jurisdiction,
            "score": score, "threshold": 0.5, "alert": True, "model_name": "aml-scorer", "model_version": "3",
            "run_id": "r1", "config_hash": "c0ffee", "bundle_hash": "b0", **extra}


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/cases.db"
    else:
        url = request.getfixturevalue("postgres_server").new_database()
    database = open_db(url)
    assert database.dialect == request.param
    yield database
    database.close()


@pytest.fixture
def people(db):
    return {"ana": create_user(db, "ana", "ana-password", "analyst"),
            "bob": create_user(db, "bob", "bob-password", "analyst"),
            "sam": create_user(db, "sam", "sam-password", "supervisor"),
            "sue": create_user(db, "sue", "sue-password", "supervisor")}


# ------------------------------------------------------------------------- schema
def test_open_db_migrates_and_the_models_match_the_migration(db):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    assert db.revision() == "0002"
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        indexes = {ix["name"] for ix in sa.inspect(conn).get_indexes("cases")}
    # Alembic cannot compare an index on DESC expressions on SQLite: checked by name instead
    risk = [d for d in diff if d[0] in ("add_index", "remove_index") and d[1].name == "ix_cases_risk"]
    assert [d for d in diff if d not in risk] == [] and "ix_cases_risk" in indexes
    # opening again is a no-op at the same revision
    again = open_db(db.engine.url)
    assert again.revision() == "0002"
    again.close()


def test_a_bare_path_opens_sqlite_and_a_bad_url_is_one_line(tmp_path):
    assert normalise_url("postgresql://u:secret@h/d").drivername == "postgresql+psycopg"
    d = open_db(tmp_path / "sub" / "c.db")
    assert d.dialect == "sqlite" and (tmp_path / "sub" / "c.db").is_file()
    d.close()
    with pytest.raises(UserError, match="not supported"):
        open_db("mysql://x@y/z")


# ------------------------------------------------------------------------- users
def test_passwords_are_hashed_and_checked(db, people):
    with db.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT password_hash FROM users WHERE username='ana'")).scalar()
    assert "ana-password" not in stored and stored.startswith("scrypt$")
    assert authenticate(db, "ana", "ana-password").username == "ana"
    assert authenticate(db, "ana", "wrong-password") is None
    assert authenticate(db, "nobody", "ana-password") is None
    set_active(db, "ana", False, actor="sam")
    assert authenticate(db, "ana", "ana-password") is None
    with pytest.raises(CaseError, match="exists"):
        create_user(db, "ana", "whatever-pass")
    with pytest.raises(CaseError, match="role"):
        create_user(db, "zed", "whatever-pass", role="admin")
    with pytest.raises(CaseError, match="8 characters"):
        create_user(db, "zed", "short")


# ------------------------------------------------------------------------- grouping
def test_alerts_group_into_one_case_per_account_over_the_period(db):
    res = ingest_alerts(db, [alert("e1", "A", 0, 0.7, 100), alert("e2", "A", 24, 0.9, 250, "GB"),
                             alert("e3", "B", 1, 0.6, 50), alert("e4", "A", 24 * 40, 0.8)], period="30d")
    assert (res.alerts_read, res.alerts_added, res.cases_opened) == (4, 4, 3)
    page = list_cases(db)
    a_cases = sorted((c for c in page.items if c.subject_account == "A"), key=lambda c: c.first_alert_at)
    first, later = a_cases
    assert (first.alert_count, first.max_score, first.total_amount, first.jurisdiction) == (2, 0.9, 350.0, "GB")
    assert later.alert_count == 1 and later.first_alert_at == T0 + timedelta(hours=24 * 40)
    # a new alert inside the period joins the account's latest active case
    res = ingest_alerts(db, [alert("e5", "A", 24 * 41, 0.95)], period="30d")
    assert (res.cases_opened, res.cases_updated) == (0, 1)
    assert get_case(db, later.id).case.alert_count == 2


def test_ingestion_is_idempotent_and_ignores_non_alerts(db):
    rows = [alert("e1", "A", 0, 0.7), {**alert("e2", "A", 1, 0.1), "alert": False}]
    assert ingest_alerts(db, rows).alerts_added == 1
    again = ingest_alerts(db, rows)
    assert (again.alerts_added, again.alerts_skipped, again.cases_opened, again.cases_updated) == (0, 1, 0, 0)
    assert list_cases(db).total == 1


def test_a_closed_case_never_reopens(db, people):
    ingest_alerts(db, [alert("e1", "A", 0, 0.7)])
    (case,) = list_cases(db).items
    decide(db, case.id, "false_positive", user="ana", note="salary")
    ingest_alerts(db, [alert("e2", "A", 1, 0.8)])
    cases = list_cases(db, status="all", account="A").items
    assert len(cases) == 2 and {c.status for c in cases} == {"closed", "open"}


def test_a_polars_frame_with_list_columns_and_receiver_subject(db):
    frame = pl.DataFrame([alert("e1", "A", 0, 0.7), alert("e2", "B", 1, 0.8)]).with_columns(
        top_features=pl.Series([[{"feature": "src_fwd_share_24h", "value": 0.96, "contribution": 1.2}],
                                [{"feature": "log_amount", "value": 9.1, "contribution": 0.4}]]),
        dst_account=pl.lit("SINK"))
    res = ingest_alerts(db, frame, subject="dst_account", source="scores.parquet")
    assert res.cases_opened == 1
    (case,) = list_cases(db).items
    assert case.subject_account == "SINK" and case.alert_count == 2
    a = get_alert(db, "e1")
    assert a.counterparty == "A" and a.top_features[0]["feature"] == "src_fwd_share_24h" and a.source == "scores.parquet"
    assert a.reasons  # written at ingestion when the scorer wrote none
    with pytest.raises(CaseError, match="event_time"):
        ingest_alerts(db, pl.DataFrame({"event_id": ["x"], "score": [0.9], "src_account": ["A"]}))


def test_reasons_written_by_the_scorer_are_kept_as_they_were(db):
    ingest_alerts(db, [alert("e1", "A", 0, 0.7, reasons=["forwarded 96 % of an inflow"], typology_hint="layering")])
    a = get_alert(db, "e1")
    assert a.reasons == ["forwarded 96 % of an inflow"] and a.typology_hint == "layering"
    assert list_cases(db, typology="layering").total == 1


# ------------------------------------------------------------------------- queue
def test_the_queue_sorts_by_risk_filters_and_pages(db, people):
    rows = [alert(f"e{i}", f"acct{i}", i, 0.5 + i / 100, 10.0 * i, "GB" if i % 2 else "US") for i in range(30)]
    rows += [alert("x1", "acct3", 3.5, 0.52)]  # acct3: two alerts, same top score as before (0.53)
    ingest_alerts(db, rows)
    page = list_cases(db, page=1, page_size=10)
    assert (page.total, page.pages, len(page.items)) == (30, 3, 10)
    scores = [c.max_score for c in page.items]
    assert scores == sorted(scores, reverse=True) and page.items[0].subject_account == "acct29"
    assert [c.subject_account for c in list_cases(db, page=3, page_size=10).items][-1] == "acct0"
    gb = list_cases(db, jurisdiction="GB", page_size=100)
    assert gb.total == 15 and all(c.jurisdiction == "GB" for c in gb.items)
    assert list_cases(db, sort="alerts").items[0].subject_account == "acct3"
    assert list_cases(db, sort="amount").items[0].subject_account == "acct29"
    top = page.items[0]
    assign(db, top.id, "ana", user="ana")
    assert [c.id for c in list_cases(db, assignee="ana").items] == [top.id]
    assert list_cases(db, assignee="none").total == 29
    decide(db, top.id, "suspicious_escalate", user="ana")
    assert [c.id for c in list_cases(db, status="escalated").items] == [top.id]
    assert list_cases(db, status=["open"]).total == 29
    f = facets(db)
    assert f["jurisdiction"] == ["GB", "US"] and f["assignee"] == ["ana"]
    with pytest.raises(CaseError):
        list_cases(db, sort="colour")
    with pytest.raises(CaseError):
        list_cases(db, status="lost")


# ------------------------------------------------------------------------- decisions
def test_maker_checker_for_a_sar(db, people):
    ingest_alerts(db, [alert("e1", "A", 0, 0.9)])
    cid = list_cases(db).items[0].id
    esc = decide(db, cid, "suspicious_escalate", user="ana", note="fan-in from 12 new payers")
    assert esc.state == "final" and get_case(db, cid).case.status == "escalated"
    sar = decide(db, cid, "sar_filed", user=people["sam"], note="report filed")
    assert sar.state == "pending" and get_case(db, cid).case.status == "pending_approval"
    with pytest.raises(InvalidTransition, match="waiting"):
        decide(db, cid, "false_positive", user="bob")
    with pytest.raises(PermissionDenied, match="second user"):
        approve(db, cid, user="sam")  # the maker
    with pytest.raises(PermissionDenied, match="supervisor"):
        approve(db, cid, user="bob")  # an analyst
    done = approve(db, cid, user="sue", note="agreed")
    assert (done.state, done.made_by, done.checked_by) == ("approved", "sam", "sue")
    detail = get_case(db, cid)
    assert (detail.case.status, detail.case.disposition) == ("closed", "sar_filed") and detail.pending is None
    assert [d.decision for d in detail.dispositions] == ["suspicious_escalate", "sar_filed"]
    with pytest.raises(InvalidTransition, match="closed"):
        decide(db, cid, "false_positive", user="ana")
    with pytest.raises(InvalidTransition, match="no SAR"):
        approve(db, cid, user="sue")


def test_a_rejected_sar_sends_the_case_back(db, people):
    ingest_alerts(db, [alert("e1", "A", 0, 0.9)])
    cid = list_cases(db).items[0].id
    decide(db, cid, "sar_filed", user="ana")
    assert get_case(db, cid).pending.made_by == "ana"
    r = reject(db, cid, user="sam", note="not enough")
    assert r.state == "rejected" and get_case(db, cid).case.status == "open"
    decide(db, cid, "false_positive", user="bob")
    assert get_case(db, cid).case.disposition == "false_positive"


def test_the_database_itself_refuses_a_checker_equal_to_the_maker(db, people):
    ingest_alerts(db, [alert("e1", "A", 0, 0.9)])
    cid = list_cases(db).items[0].id
    d = decide(db, cid, "sar_filed", user="sam")
    with pytest.raises(sa.exc.IntegrityError):
        with db.engine.begin() as conn:
            conn.execute(sa.text("UPDATE dispositions SET checked_by_id = made_by_id WHERE id = :i"), {"i": d.id})


def test_errors_for_missing_things_and_bad_decisions(db, people):
    with pytest.raises(NotFound):
        get_case(db, 999)
    with pytest.raises(NotFound):
        decide(db, 999, "false_positive", user="ana")
    ingest_alerts(db, [alert("e1", "A", 0, 0.9)])
    cid = list_cases(db).items[0].id
    with pytest.raises(InvalidTransition, match="not one of"):
        decide(db, cid, "maybe", user="ana")
    with pytest.raises(NotFound):
        decide(db, cid, "false_positive", user="mallory")
    set_active(db, "bob", False)
    with pytest.raises(PermissionDenied, match="deactivated"):
        decide(db, cid, "false_positive", user="bob")
    with pytest.raises(PermissionDenied, match="supervisor"):
        assign(db, cid, "sue", user="ana")  # an analyst assigns only themselves
    assert assign(db, cid, "ana", user="sam").assignee == "ana"


# ------------------------------------------------------------------------- audit
def test_every_action_is_audited_with_before_and_after(db, people):
    ingest_alerts(db, [alert("e1", "A", 0, 0.9)], source="scores.parquet")
    cid = list_cases(db).items[0].id
    assign(db, cid, "ana", user="ana")
    decide(db, cid, "sar_filed", user="ana", note="structuring below 10k")
    approve(db, cid, user="sam")
    log_action(db, "ana", "label_export", entity="labels", after={"rows": 1})
    trail = audit_trail(db, case_id=cid)
    assert [e.action for e in trail] == ["case_opened", "assign", "decide", "approve"]
    assert trail[0].username == "system" and trail[0].note == "scores.parquet"
    dec = trail[2]
    assert (dec.username, dec.before["status"], dec.after["status"], dec.note) == (
        "ana", "open", "pending_approval", "structuring below 10k")
    assert trail[3].after["status"] == "closed" and trail[3].username == "sam"
    assert all(a.at <= b.at for a, b in zip(trail, trail[1:]))
    everyone = audit_trail(db)
    assert {"user_created", "label_export"} <= {e.action for e in everyone}
    assert [e.action for e in audit_trail(db, user="ana")][-1] == "label_export"
    assert get_case(db, cid).audit == trail


def test_the_audit_trail_is_append_only(db, people):
    ingest_alerts(db, [alert("e1", "A", 0, 0.9)])
    entry = audit_trail(db)[0]
    for sql in ("UPDATE audit_events SET action = 'nothing' WHERE id = :i", "DELETE FROM audit_events WHERE id = :i"):
        with pytest.raises(sa.exc.DatabaseError, match="append-only"):
            with db.engine.begin() as conn:
                conn.execute(sa.text(sql), {"i": entry.id})
    from aml_pipeline.cases import AuditIsAppendOnly
    from aml_pipeline.cases.models import AuditEvent

    with pytest.raises(AuditIsAppendOnly):
        with db.session() as s:
            s.get(AuditEvent, entry.id).action = "nothing"
    with pytest.raises(AuditIsAppendOnly):
        with db.session() as s:
            s.delete(s.get(AuditEvent, entry.id))
    assert audit_trail(db)[0] == entry


# ------------------------------------------------------------------------- concurrency
def test_two_users_deciding_at_once_cannot_both_pass_the_checks(db, people):
    """Row locks (PostgreSQL) and the write lock (SQLite): of two simultaneous decisions on
    one case, one lands and the other sees the case it left; of two approvals, one."""
    import threading

    ingest_alerts(db, [alert(f"e{i}", f"acct{i}", i, 0.9) for i in range(6)])
    ids = [c.id for c in list_cases(db, page_size=10).items]
    for cid in ids[:3]:
        outcomes: list[str] = []
        start = threading.Barrier(2)

        def act(decision: str, user: str) -> None:
            start.wait()
            try:
                decide(db, cid, decision, user=user)
                outcomes.append("ok")
            except InvalidTransition:
                outcomes.append("refused")

        threads = [threading.Thread(target=act, args=("sar_filed", "ana")),
                   threading.Thread(target=act, args=("false_positive", "bob"))]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert sorted(outcomes) == ["ok", "refused"]
        assert len(get_case(db, cid).dispositions) == 1
    for cid in ids[3:]:
        decide(db, cid, "sar_filed", user="ana")
        outcomes = []
        start = threading.Barrier(2)

        def check(user: str) -> None:
            start.wait()
            try:
                approve(db, cid, user=user)
                outcomes.append("ok")
            except InvalidTransition:
                outcomes.append("refused")

        threads = [threading.Thread(target=check, args=(u,)) for u in ("sam", "sue")]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert sorted(outcomes) == ["ok", "refused"]
        assert [e.action for e in audit_trail(db, case_id=cid)].count("approve") == 1
