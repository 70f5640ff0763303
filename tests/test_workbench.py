"""The workbench over a real case database, SQLite and a PostgreSQL server the module
starts, through FastAPI's TestClient (the app's own middleware, templates and the case
database's rules; nothing stubbed).

The browser walk-through is tests/test_workbench_browser.py."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest
from fastapi.testclient import TestClient

from aml_pipeline import cases
from aml_pipeline.workbench.app import SESSION_COOKIE, Settings, create_app
from aml_pipeline.workbench.evidence import Transactions
from aml_pipeline.workbench.flow import render_flow
from aml_pipeline.workbench.security import session_secret

T0 = datetime(2025, 3, 14, 10, 0, tzinfo=timezone.utc)
PASSWORDS = {"ana": "ana-password-1", "bob": "bob-password-1", "sam": "sam-password-1", "sue": "sue-password-1"}


def _transactions() -> pl.DataFrame:
    """A2 receives from A1 and forwards most of it to A3 forty minutes later; A3 pays A4."""
    rows = [("e1", T0, "A1", "A2", 9000.0), ("e2", T0 + timedelta(minutes=40), "A2", "A3", 8640.0),
            ("e3", T0 + timedelta(hours=2), "A3", "A4", 8000.0), ("e4", T0 - timedelta(days=2), "A2", "A5", 120.0),
            ("e5", T0 + timedelta(hours=1), "B1", "B2", 500.0), ("e6", T0 - timedelta(days=30), "A2", "A6", 77.0)]
    return pl.DataFrame(rows, schema=["event_id", "event_time", "src_account", "dst_account", "amount"], orient="row"
                        ).with_columns(currency=pl.lit("USD"), channel=pl.lit("wire"))


def _alerts(tx: pl.DataFrame) -> pl.DataFrame:
    scores = {"e2": 0.97, "e5": 0.71}
    return (tx.filter(pl.col("event_id").is_in(list(scores)))
            .with_columns(score=pl.col("event_id").replace_strict(scores), threshold=pl.lit(0.5), alert=pl.lit(True),
                          jurisdiction=pl.lit("GB"), model_name=pl.lit("aml-scorer"), model_version=pl.lit("3"),
                          config_hash=pl.lit("c0ffee1234567890"),
                          reasons=pl.lit(["forwarded 96 % of an inflow received 40 minutes earlier"]),
                          top_features=pl.lit([{"feature": "pass_through_share", "value": 0.96, "contribution": 1.2}])))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request, tmp_path_factory):
    """The same app over either engine: every test below runs on both."""
    root = tmp_path_factory.mktemp("workbench")
    url = f"sqlite:///{root / 'cases.db'}" if request.param == "sqlite" else \
        request.getfixturevalue("postgres_server").new_database()
    db = cases.open_db(url)
    assert db.dialect == request.param
    users = {name: cases.create_user(db, name, pw, role="supervisor" if name in ("sam", "sue") else "analyst")
             for name, pw in PASSWORDS.items()}
    tx = _transactions()
    cases.ingest_alerts(db, _alerts(tx), period="30d", source="test")
    # an alert on an account the transactions file does not hold (scored from elsewhere)
    cases.ingest_alerts(db, [{"event_id": "z1", "event_time": T0, "score": 0.6, "threshold": 0.5, "alert": True,
                              "src_account": "Z9", "dst_account": "Z8", "amount": 42.0, "jurisdiction": "GB"}],
                        period="30d", source="test")
    top = cases.list_cases(db).items
    app = create_app(db, Settings(secret="s" * 40), Transactions(tx, "memory"))
    yield {"db": db, "app": app, "users": users, "top": top}
    db.close()


def client(world) -> TestClient:
    return TestClient(world["app"], follow_redirects=False)


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(world, name: str) -> tuple[TestClient, str]:
    c = client(world)
    token = csrf_of(c.get("/login").text)
    r = c.post("/login", data={"username": name, "password": PASSWORDS[name], "csrf_token": token, "next": "/queue"})
    assert r.status_code == 303 and r.headers["location"] == "/queue", r.text
    page = c.get("/queue")
    assert page.status_code == 200
    return c, csrf_of(page.text)


def test_nothing_answers_without_login(world):
    """Every route but the login form and the stylesheet: pages redirect to the login, the
    API and every POST answer 401; a forged cookie is no login."""
    c = client(world)
    case_id = world["top"][0].id
    seen = 0
    for route in world["app"].routes:
        path = getattr(route, "path", "")
        if path.startswith(("/login", "/static")) or not getattr(route, "methods", None):
            continue
        url = path.replace("{case_id}", str(case_id))
        for method in route.methods - {"HEAD"}:
            seen += 1
            r = c.request(method, url, headers={"accept": "text/html"})
            if method == "GET" and not url.startswith("/api/"):
                assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), (method, url)
            else:
                assert r.status_code == 401, (method, url, r.status_code)
            assert "A2" not in r.text
    assert seen >= 10
    forged = client(world)
    forged.cookies.set(SESSION_COOKIE, "eyJ1aWQiOiAxfQ==.forged.signature")
    assert forged.get("/api/cases").status_code == 401
    assert client(world).get("/api/cases").status_code == 401
    assert client(world).get("/no/such/page", headers={"accept": "text/html"}).status_code == 303
    assert client(world).get("/static/workbench.css").status_code == 200


def test_login_cookie_and_headers(world):
    c = client(world)
    r = c.get("/login")
    assert "default-src 'none'" in r.headers["content-security-policy"] and r.headers["x-frame-options"] == "DENY"
    token = csrf_of(r.text)
    bad = c.post("/login", data={"username": "ana", "password": "wrong-password", "csrf_token": token})
    assert bad.status_code == 401 and "Wrong user name or password" in bad.text
    ok = c.post("/login", data={"username": "ana", "password": PASSWORDS["ana"], "csrf_token": token, "next": "//evil.example/"})
    assert ok.status_code == 303 and ok.headers["location"] == "/queue"  # never to another site
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
    me = c.get("/api/me").json()
    assert me["username"] == "ana" and "password_hash" not in me
    entries = cases.audit_trail(world["db"], action="login_failed")
    assert entries and entries[-1].after["username"] == "ana"


def test_csrf_missing_or_wrong_is_refused(world):
    c, token = login(world, "ana")
    case_id = world["top"][-1].id
    for data in ({"decision": "false_positive", "note": "x"}, {"decision": "false_positive", "note": "x", "csrf_token": "nope"}):
        r = c.post(f"/cases/{case_id}/decide", data=data)
        assert r.status_code == 403, r.text
    other, _ = login(world, "bob")  # another session's token is wrong here too
    assert other.post(f"/cases/{case_id}/assign", data={"assignee": "me", "csrf_token": token}).status_code == 403
    cross = c.post(f"/cases/{case_id}/assign", data={"assignee": "me", "csrf_token": token},
                   headers={"origin": "https://evil.example"})
    assert cross.status_code == 403
    assert cases.get_case(world["db"], case_id).case.status == "open"
    assert c.post("/logout", data={}).status_code == 403  # logging out takes the token too
    assert c.get("/api/me").status_code == 200


def test_queue_case_page_and_maker_checker(world):
    db, (top, second, _) = world["db"], world["top"]
    ana, ana_token = login(world, "ana")
    queue = ana.get("/queue").text
    assert queue.index(f"/cases/{top.id}") < queue.index(f"/cases/{second.id}")  # highest score first
    assert "A2" in queue and "0.970" in queue
    gb = ana.get("/queue?jurisdiction=XX").text
    assert "No case matches" in gb

    page = ana.get(f"/cases/{top.id}").text
    assert "forwarded 96 % of an inflow received 40 minutes earlier" in page
    assert "c0ffee123456" in page and "version 3" in page and "0.500" in page
    svg = page[page.index("<svg"):page.index("</svg>")]
    for account in ("A1", "A2", "A3", "A4", "A5"):
        assert f">{account}</text>" in svg
    assert "A6" not in svg  # outside the window (30 days earlier)
    assert "8,640.00 USD" in svg and 'class="edge alerted"' in svg

    r = ana.post(f"/cases/{top.id}/decide", data={"decision": "sar_filed", "note": "layering", "csrf_token": ana_token})
    assert r.status_code == 303
    assert "waiting for a supervisor" in ana.get(f"/cases/{top.id}").text
    # the maker and an analyst cannot approve; the database says why
    own = ana.post(f"/cases/{top.id}/check", data={"verdict": "approve", "note": "", "csrf_token": ana_token})
    assert own.status_code == 403 and "only a supervisor" in own.text
    bob, bob_token = login(world, "bob")
    assert bob.post(f"/cases/{top.id}/check", data={"verdict": "approve", "csrf_token": bob_token}).status_code == 403
    assert cases.get_case(db, top.id).case.status == "pending_approval"

    sam, sam_token = login(world, "sam")
    approvals = sam.get("/approvals").text
    assert f"/cases/{top.id}#approval" in approvals and "layering" in approvals
    assert sam.post(f"/cases/{top.id}/check", data={"verdict": "approve", "note": "ok", "csrf_token": sam_token}).status_code == 303
    detail = cases.get_case(db, top.id)
    assert detail.case.status == "closed" and detail.case.disposition == "sar_filed"
    assert [e.action for e in detail.audit][-2:] == ["decide", "approve"]
    closed = sam.get(f"/cases/{top.id}").text
    assert "Record decision" not in closed and "sam" in closed


def test_supervisor_cannot_approve_own_sar_and_assignment(world):
    db, second = world["db"], world["top"][1]
    sam, token = login(world, "sam")
    assert sam.post(f"/cases/{second.id}/assign", data={"assignee": "bob", "csrf_token": token}).status_code == 303
    assert cases.get_case(db, second.id).case.assignee == "bob"
    note = "<script>alert(1)</script>"
    assert sam.post(f"/cases/{second.id}/decide", data={"decision": "sar_filed", "note": note, "csrf_token": token}).status_code == 303
    own = sam.post(f"/cases/{second.id}/check", data={"verdict": "approve", "csrf_token": token})
    assert own.status_code == 403 and "maker-checker" in own.text
    page = sam.get(f"/cases/{second.id}").text
    assert "You filed it" in page and note not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    sue, sue_token = login(world, "sue")
    assert sue.post(f"/cases/{second.id}/check", data={"verdict": "reject", "note": "more evidence", "csrf_token": sue_token}).status_code == 303
    assert cases.get_case(db, second.id).case.status == "open"
    ana, ana_token = login(world, "ana")  # an analyst may not give a case to someone else
    r = ana.post(f"/cases/{second.id}/assign", data={"assignee": "bob", "csrf_token": ana_token})
    assert r.status_code == 403


def test_session_secret_file_is_created_once_private(tmp_path, monkeypatch):
    monkeypatch.delenv("AML_WORKBENCH_SECRET", raising=False)
    path = tmp_path / "sub" / "workbench.secret"
    key = session_secret(path)
    assert len(key) >= 32 and session_secret(path) == key and (path.stat().st_mode & 0o777) == 0o600
    monkeypatch.setenv("AML_WORKBENCH_SECRET", "e" * 40)
    assert session_secret(path) == "e" * 40


def test_flow_picture_by_hand():
    """A2 got 9,000 from A1 and sent 8,640 to A3 (alerted): A1 stands left, A3 right, A4
    (paid by A3) further right; account names are escaped; the same input gives the same bytes."""
    t = T0
    nodes = [{"id": "A2", "hop": 0}, {"id": "A1", "hop": 1}, {"id": "A3", "hop": 1}, {"id": "A4", "hop": 2},
             {"id": "<b>", "hop": 1}]
    edges = [{"src": "A1", "dst": "A2", "amount": 9000.0, "event_time": t, "event_id": "e1", "alerted": False},
             {"src": "A2", "dst": "A3", "amount": 8640.0, "event_time": t + timedelta(minutes=40), "event_id": "e2", "alerted": True},
             {"src": "A3", "dst": "A4", "amount": 4000.0, "event_time": t + timedelta(hours=2), "event_id": "e3", "alerted": False},
             {"src": "A3", "dst": "A4", "amount": 4000.0, "event_time": t + timedelta(hours=3), "event_id": "e4", "alerted": False},
             {"src": "<b>", "dst": "A2", "amount": 1.0, "event_time": t, "event_id": "e5", "alerted": False}]
    svg = render_flow("A2", nodes, edges, currency="USD")
    x = {m.group(2): float(m.group(1)) for m in re.finditer(r'<text x="([\d.]+)" y="[\d.]+" text-anchor="middle" fill="#101828"[^>]*>([^<]+)</text>', svg)}
    assert x["A1"] < x["A2"] < x["A3"] < x["A4"]
    assert "2\u00d7 8,000.00 USD" in svg and "14 Mar 12:00-13:00" in svg  # two transfers, one arrow
    assert svg.count('class="edge alerted"') == 1 and "&lt;b&gt;" in svg and "<b>" not in svg
    assert "style=" not in svg and render_flow("A2", nodes, edges, currency="USD") == svg


def test_failed_logins_are_throttled(world):
    """Five wrong passwords for a user name: the sixth attempt is refused even with the right one."""
    c = client(world)
    token = csrf_of(c.get("/login").text)
    for _ in range(5):
        assert c.post("/login", data={"username": "bob", "password": "guess-guess", "csrf_token": token}).status_code == 401
    r = c.post("/login", data={"username": "bob", "password": PASSWORDS["bob"], "csrf_token": token})
    assert r.status_code == 429 and "Too many failed attempts" in r.text
    assert c.get("/api/me").status_code == 401


@pytest.mark.parametrize("override, needle", [
    ("workbench.session_max_age=soon", "workbench.session_max_age='soon' is not a duration"),
    ("workbench.flow_hops=3", "workbench.flow_hops=3: 1 or 2"),
])
def test_bad_workbench_config_names_the_key(tmp_path, compose_cfg, override, needle):
    """Checked before the database is opened or created."""
    from aml_pipeline.errors import ConfigError
    from aml_pipeline.workbench.server import build

    cfg = compose_cfg(["task=workbench", override, f"workbench.db_url=sqlite:///{tmp_path / 'c.db'}"])
    with pytest.raises(ConfigError, match=re.escape(needle)):
        build(cfg)
    assert not (tmp_path / "c.db").exists()


def test_a_deactivated_user_is_out_at_once(world):
    PASSWORDS.setdefault("eve", "eve-password-1")
    if not any(u.username == "eve" for u in cases.list_users(world["db"])):
        cases.create_user(world["db"], "eve", PASSWORDS["eve"], role="analyst")
    eve, _ = login(world, "eve")
    assert eve.get("/api/me").json()["username"] == "eve"
    cases.set_active(world["db"], "eve", False)
    assert eve.get("/api/me").status_code == 401
    assert eve.get("/queue", headers={"accept": "text/html"}).headers["location"].startswith("/login")


def test_an_account_missing_from_the_transactions_shows_its_alerted_transfers(world):
    ana, _ = login(world, "ana")
    z9 = next(c for c in world["top"] if c.subject_account == "Z9")
    page = ana.get(f"/cases/{z9.id}").text
    assert "the transactions file (memory) has none of this account" in page
    svg = page[page.index("<svg"):page.index("</svg>")]
    assert ">Z8</text>" in svg and "42.00" in svg and 'class="edge alerted"' in svg
    assert "out to" in page and ">z1 <strong>alert</strong>" in page
