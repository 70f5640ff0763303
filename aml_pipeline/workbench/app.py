"""The workbench's pages and its small JSON API (FastAPI, Jinja2 templates, no script).

Every route is behind :class:`~aml_pipeline.workbench.security.LoginRequired`; every POST
checks the session's CSRF token. The pages only read and call the case database's
functions (:mod:`aml_pipeline.cases`): the rules (who may approve, which transitions are
allowed, the audit trail) live there, and a refusal comes back as the database's own
one-line message with its HTTP status.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.middleware.sessions import SessionMiddleware

from aml_pipeline import cases
from aml_pipeline.cases import CaseDB, CaseError, NotFound
from aml_pipeline.workbench.evidence import Transactions, alerted_transfers, flow_of
from aml_pipeline.workbench.flow import render_flow
from aml_pipeline.workbench.security import (CSRF_FIELD, LoginRequired, LoginThrottle, SecurityHeaders, check_csrf,
                                             csrf_token, new_csrf_token, safe_next, wants_json)

HERE = Path(__file__).resolve().parent
#: A case page lists at most this many alerts in full (the highest scores, in time order);
#: the transactions table and the flow picture still show them all.
ALERTS_SHOWN = 100
SESSION_COOKIE = "aml_workbench"
DECISION_CHOICES = [(d, cases.DECISION_WORDS[d]) for d in cases.DECISIONS]
STATUS_CHOICES = [("active", "active (open, escalated, waiting)"), *[(s, s.replace("_", " ")) for s in cases.CASE_STATUSES],
                  ("all", "all")]
SORT_CHOICES = [("risk", "risk (score, alerts, amount)"), ("score", "highest score"), ("alerts", "most alerts"),
                ("amount", "largest amount"), ("newest", "newest alert"), ("oldest", "oldest alert")]


@dataclass(frozen=True)
class Settings:
    secret: str
    secure_cookies: bool = False
    session_max_age: int = 8 * 3600
    page_size: int = 50
    window: timedelta = timedelta(days=7)
    flow_hops: int = 2
    flow_max_edges: int = 200


class Refused(Exception):
    """A request the workbench answers with a status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _money(x: Any) -> str:
    return "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{float(x):,.2f}"


def _when(t: Optional[datetime]) -> str:
    return "" if t is None else t.strftime("%Y-%m-%d %H:%M UTC")


def _score(x: Any) -> str:
    return "" if x is None else f"{float(x):.3f}"


def _json(x: Any) -> str:
    if not x:
        return ""
    return ", ".join(f"{k}: {v}" for k, v in x.items()) if isinstance(x, dict) else json.dumps(x)


def create_app(db: CaseDB, settings: Settings, transactions: Optional[Transactions] = None) -> FastAPI:
    app = FastAPI(title="aml_pipeline workbench", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters.update(money=_money, when=_when, score=_score, kv=_json)
    templates.env.globals.update(decision_words=cases.DECISION_WORDS)
    by_user, by_address = LoginThrottle(limit=5), LoginThrottle(limit=20)  # an office shares one address

    # outermost first: headers on everything, then the cookie, then the login check
    app.add_middleware(LoginRequired)
    app.add_middleware(SessionMiddleware, secret_key=settings.secret, session_cookie=SESSION_COOKIE,
                       max_age=settings.session_max_age, same_site="lax", https_only=settings.secure_cookies)
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def user_of(request: Request):
        """The logged-in user, read again on every request (a deactivated user is out at once)."""
        uid = request.session.get("uid")
        try:
            user = cases.get_user(db, int(uid)) if uid is not None else None
        except NotFound:
            user = None
        if user is None or not user.active:
            request.session.clear()
            raise Refused(401, "login required")
        return user

    def page(request: Request, name: str, context: dict, status: int = 200) -> HTMLResponse:
        user = context.get("user")
        pending = 0
        if user is not None and user.role == "supervisor":
            pending = cases.list_cases(db, status="pending_approval", page_size=1).total
        return templates.TemplateResponse(request, name, {"csrf": csrf_token(request), "csrf_field": CSRF_FIELD,
                                                          "pending_count": pending, **context}, status_code=status)

    async def form_of(request: Request) -> dict:
        form = await request.form()
        if not check_csrf(request, form.get(CSRF_FIELD)):
            raise Refused(403, "the form's security token is missing or stale; reload the page and try again")
        return {k: v for k, v in form.items() if isinstance(v, str)}

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> Response:
        if exc.status == 401 and not wants_json(request) and request.method in ("GET", "HEAD"):
            return RedirectResponse("/login", status_code=303)
        if wants_json(request):
            return JSONResponse({"detail": exc.message}, status_code=exc.status)
        return page(request, "error.html", {"message": exc.message, "status": exc.status}, exc.status)

    @app.exception_handler(CaseError)
    async def case_error(request: Request, exc: CaseError) -> Response:
        return await refused(request, Refused(getattr(exc, "http_status", 400), str(exc)))

    # ------------------------------------------------------------------ login
    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/queue"):
        return page(request, "login.html", {"next": safe_next(next), "error": None})

    @app.post("/login")
    async def login(request: Request):
        form = await form_of(request)
        username, password = form.get("username", "").strip(), form.get("password", "")
        nxt = safe_next(form.get("next"))
        address = request.client.host if request.client else "?"
        if by_user.blocked(username) or by_address.blocked(address):
            return page(request, "login.html", {"next": nxt, "error": "Too many failed attempts; wait a few minutes."}, 429)
        # scrypt takes tens of milliseconds of CPU: off the event loop, like every database call
        user = await run_in_threadpool(cases.authenticate, db, username, password)
        if user is None:
            by_user.failed(username)
            by_address.failed(address)
            await run_in_threadpool(cases.log_action, db, None, "login_failed", after={"username": username[:64]})
            return page(request, "login.html", {"next": nxt, "error": "Wrong user name or password."}, 401)
        by_user.succeeded(username)
        request.session.clear()  # a new session: nothing from before the login carries over
        request.session.update({"uid": user.id, "csrf": new_csrf_token()})
        await run_in_threadpool(cases.log_action, db, user, "login")
        return RedirectResponse(nxt, status_code=303)

    @app.post("/logout")
    async def logout(request: Request):
        user = await run_in_threadpool(user_of, request)
        await form_of(request)
        await run_in_threadpool(cases.log_action, db, user, "logout")
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # ------------------------------------------------------------------ pages
    @app.get("/")
    def home(request: Request):
        user_of(request)
        return RedirectResponse("/queue", status_code=303)

    def queue_args(request: Request) -> dict:
        q = request.query_params
        try:
            number = max(1, int(q.get("page", "1")))
        except ValueError:
            raise Refused(400, f"page={q.get('page')!r} is not a page number") from None
        sort = q.get("sort") or "risk"
        return {"status": q.get("status") or "active", "jurisdiction": q.get("jurisdiction") or None,
                "typology": q.get("typology") or None, "assignee": q.get("assignee") or None, "sort": sort,
                "page": number}

    @app.get("/queue", response_class=HTMLResponse)
    def queue(request: Request):
        user = user_of(request)
        args = queue_args(request)
        result = cases.list_cases(db, page_size=settings.page_size, **args)
        kept = {k: v for k, v in args.items() if v and k != "page"}
        links = {"prev": "/queue?" + urlencode({**kept, "page": result.page - 1}) if result.has_prev else None,
                 "next": "/queue?" + urlencode({**kept, "page": result.page + 1}) if result.has_next else None}
        return page(request, "queue.html", {
            "user": user, "result": result, "args": args, "links": links, "facets": cases.facets(db, "all"),
            "statuses": STATUS_CHOICES, "sorts": SORT_CHOICES, "title": "Queue"})

    @app.get("/approvals", response_class=HTMLResponse)
    def approvals(request: Request):
        user = user_of(request)
        waiting = cases.list_cases(db, status="pending_approval", sort="oldest", page_size=200)
        rows = []
        for c in waiting.items:
            detail = cases.get_case(db, c.id)
            if detail.pending is not None:
                rows.append((c, detail.pending))
        return page(request, "approvals.html", {"user": user, "rows": rows, "title": "Approvals"})

    def evidence(detail) -> dict:
        c = detail.case
        start, end = c.first_alert_at - settings.window, c.last_alert_at
        alerted = {a.event_id for a in detail.alerts}
        known = transactions is not None and transactions.knows(c.subject_account)
        if known:
            transfers, total = transactions.account(c.subject_account, start, end)
            # the picture also follows the money after the alerts: where it went next
            flow_end = end + settings.window
            nodes, edges = transactions.flow(c.subject_account, start, flow_end, settings.flow_hops,
                                             settings.flow_max_edges)
            note = None
        else:
            transfers = alerted_transfers(detail.alerts)
            total, flow_end = len(transfers), end
            nodes, edges = flow_of(transfers, c.subject_account)
            note = ("Only the case's alerted transfers are shown: "
                    + ("no transactions file is loaded." if transactions is None
                       else f"the transactions file ({transactions.source}) has none of this account's."))
        for e in edges:
            e["alerted"] = e["event_id"] in alerted
        currency = next((a.currency for a in detail.alerts if a.currency), "")
        shown = sorted(sorted(detail.alerts, key=lambda a: -a.score)[:ALERTS_SHOWN],
                       key=lambda a: (a.event_time, a.event_id))
        return {"shown_alerts": shown, "transfers": transfers, "transfer_total": total, "alerted": alerted,
                "window_start": start, "window_end": end, "flow_end": flow_end, "evidence_note": note,
                "flow_svg": render_flow(c.subject_account, nodes, edges, currency=currency or "")}

    def case_page(request: Request, user, case_id: int, message: Optional[str] = None, error: Optional[str] = None,
                  status: int = 200) -> HTMLResponse:
        detail = cases.get_case(db, case_id)
        users = [u.username for u in cases.list_users(db) if u.active]
        return page(request, "case.html", {"user": user, "d": detail, "c": detail.case, "users": users,
                                           "decisions": DECISION_CHOICES, "message": message, "error": error,
                                           "title": f"Case {detail.case.id}", **evidence(detail)}, status)

    @app.get("/cases/{case_id}", response_class=HTMLResponse)
    def case(request: Request, case_id: int):
        user = user_of(request)
        flash = request.session.pop("flash", None)
        return case_page(request, user, case_id, message=flash)

    async def act(request: Request, case_id: int, action) -> Response:
        """A POST on a case: the form (CSRF checked), then the database's rule, off the event loop."""
        user = await run_in_threadpool(user_of, request)
        form = await form_of(request)
        try:
            message = await run_in_threadpool(action, user, form)
        except CaseError as exc:
            status = getattr(exc, "http_status", 400)
            if wants_json(request):
                return JSONResponse({"detail": str(exc)}, status_code=status)
            return await run_in_threadpool(case_page, request, user, case_id, error=str(exc), status=status)
        request.session["flash"] = message
        return RedirectResponse(f"/cases/{case_id}", status_code=303)

    @app.post("/cases/{case_id}/decide")
    async def decide(request: Request, case_id: int):
        def run(user, form):
            d = cases.decide(db, case_id, form.get("decision", ""), user=user, note=form.get("note", ""))
            return f"Recorded: {d.decision_words}" + (" - waiting for a supervisor's approval" if d.state == "pending" else "")
        return await act(request, case_id, run)

    @app.post("/cases/{case_id}/assign")
    async def assign(request: Request, case_id: int):
        def run(user, form):
            who = form.get("assignee", "").strip()
            target = user.username if who == "me" else (who or None)
            c = cases.assign(db, case_id, target, user=user)
            return f"Assigned to {c.assignee}" if c.assignee else "Released: nobody is assigned"
        return await act(request, case_id, run)

    @app.post("/cases/{case_id}/check")
    async def check(request: Request, case_id: int):
        def run(user, form):
            verdict = form.get("verdict")
            if verdict not in ("approve", "reject"):
                raise CaseError(f"verdict {verdict!r} is not approve or reject")
            fn = cases.approve if verdict == "approve" else cases.reject
            d = fn(db, case_id, user=user, note=form.get("note", ""))
            return f"SAR {d.state} by {d.checked_by}"
        return await act(request, case_id, run)

    # ------------------------------------------------------------------ JSON
    @app.get("/api/me")
    def me(request: Request):
        return user_of(request).to_dict()

    @app.get("/api/cases")
    def api_cases(request: Request):
        user_of(request)
        return cases.list_cases(db, page_size=settings.page_size, **queue_args(request)).to_dict()

    @app.get("/api/cases/{case_id}")
    def api_case(request: Request, case_id: int):
        user_of(request)
        return cases.get_case(db, case_id).to_dict()

    return app
