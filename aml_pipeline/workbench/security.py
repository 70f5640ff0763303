"""Who may see what: the session key, logins, CSRF tokens and the response headers.

- The session is a cookie signed with a key from env ``AML_WORKBENCH_SECRET`` or from a file
  created once with a random key (mode 0600); the key is never logged or shown. The cookie is
  HttpOnly and SameSite=Lax (Secure with ``workbench.secure_cookies``); it holds only the
  user's id and a CSRF token. The user is read again on every request, so a user
  deactivated in the case database is out at once.
- :class:`LoginRequired` is a middleware in front of every route: nothing answers without a
  login but the login form and the stylesheet. Pages redirect to the login form; the JSON
  API and any non-GET request answer 401.
- Every POST form carries the session's CSRF token (:func:`check_csrf`), compared in constant
  time; a POST whose Origin is another site is refused before that.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from collections import defaultdict, deque
from pathlib import Path
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from aml_pipeline.errors import UserError

SECRET_ENV = "AML_WORKBENCH_SECRET"
#: Paths answered without a login: the login form itself and its stylesheet.
PUBLIC_PREFIXES = ("/login", "/static/")
CSRF_FIELD = "csrf_token"

#: Sent with every response: no framing, no sniffing, no referrer to other sites, and only
#: this site's own styles and images (the pages run no script at all).
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def session_secret(secret_file: Path) -> str:
    """The key that signs session cookies: env AML_WORKBENCH_SECRET, else the file's content,
    else a new random key written to the file (readable by its owner only)."""
    env = os.environ.get(SECRET_ENV)
    if env:
        if len(env) < 32:
            raise UserError(f"{SECRET_ENV} is shorter than 32 characters; use a long random value "
                            "(python -c 'import secrets; print(secrets.token_urlsafe(48))')")
        return env
    if secret_file.is_file():
        key = secret_file.read_text(encoding="utf-8").strip()
        if len(key) < 32:
            raise UserError(f"workbench.secret_file={secret_file}: the key is shorter than 32 characters")
        return key
    secret_file.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    try:
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it meanwhile: use theirs
        return session_secret(secret_file)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    return key


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_token(request: Request) -> str:
    """The session's CSRF token (one per session; a login starts a new one)."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = new_csrf_token()
    return token


def check_csrf(request: Request, submitted: object) -> bool:
    expected = request.session.get("csrf")
    return bool(expected) and isinstance(submitted, str) and hmac.compare_digest(submitted.encode(), expected.encode())


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (Origin header)."""
    origin = request.headers.get("origin")
    if not origin:
        return True  # not sent: a same-origin GET, or a client that is no browser
    if origin == "null":
        return False  # an opaque origin (a sandboxed frame, a file)
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc == host


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", "")


class LoginRequired:
    """Refuses every request without a logged-in session, except :data:`PUBLIC_PREFIXES`.

    Sits inside the session middleware, so ``scope["session"]`` is the verified cookie; the
    route handlers check the user still exists (:func:`aml_pipeline.workbench.app.current_user`).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = request.url.path
        if request.method not in ("GET", "HEAD") and not same_origin(request):
            await PlainTextResponse("cross-site request refused", status_code=403)(scope, receive, send)
            return
        if path.startswith(PUBLIC_PREFIXES) or scope["session"].get("uid") is not None:
            await self.app(scope, receive, send)
            return
        if wants_json(request) or request.method not in ("GET", "HEAD"):
            response = JSONResponse({"detail": "login required"}, status_code=401)
        else:
            target = path + (f"?{request.url.query}" if request.url.query else "")
            response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        await response(scope, receive, send)


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for k, v in SECURITY_HEADERS.items():
                    if k.encode() not in present:
                        headers.append((k.encode(), v.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class LoginThrottle:
    """At most ``limit`` failed logins per key (a user name, a client address) in ``window``
    seconds; further attempts are refused without checking the password, so guessing is slow."""

    def __init__(self, limit: int = 5, window: float = 300.0) -> None:
        self.limit, self.window = limit, window
        self.failures: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self.failures[key]
        while q and q[0] < now - self.window:
            q.popleft()
        return q

    def blocked(self, key: str) -> bool:
        return len(self._recent(key, time.monotonic())) >= self.limit

    def failed(self, key: str) -> None:
        now = time.monotonic()
        self._recent(key, now).append(now)

    def succeeded(self, key: str) -> None:
        self.failures.pop(key, None)


def safe_next(target: str | None) -> str:
    """Where to go after the login: a local path only (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/queue"
    return target
