"""``cryptoface ui``: the client's web app on 127.0.0.1, holding the key set, talking to the matching server through
the same :class:`~cryptoface.client.Client` the CLI uses.

Who may use it: whoever opened the link the command printed. The link carries a one-time session secret that
becomes an HttpOnly, SameSite=Strict cookie; every page and API call needs it. Against other web pages the user
visits (the app holds a secret key and can enrol and delete): state changes are POSTs with a per-session CSRF token
and a matching Origin, the Host header must be this app's loopback address (no DNS rebinding), and pages forbid
framing, inline script and every third-party origin (Content-Security-Policy). Uploads are bounded. Nothing here
logs a request line (the first one carries the session secret), a score or a key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartParser

from cryptoface.client import Client
from cryptoface.errors import CryptoFaceError
from cryptoface.names import validate_name
from cryptoface.params import params_to_json
from cryptoface.ui import operations, pages
from cryptoface.ui.photos import MAX_PHOTO_BYTES, PhotoShelf, read_photo
from cryptoface.ui.tasks import TaskRunner

COOKIE = "cryptoface_ui"
MAX_BODY = MAX_PHOTO_BYTES + 1024 * 1024  # one photo and the form around it
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# referrer-policy same-origin, not no-referrer: under no-referrer Chromium sends "Origin: null" with the app's own
# form posts, which the Origin check must refuse (a sandboxed frame on another site sends null too).
SECURITY_HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff",
                    "referrer-policy": "same-origin", "x-frame-options": "DENY", "cache-control": "no-store",
                    "cross-origin-opener-policy": "same-origin", "cross-origin-resource-policy": "same-origin"}
STATIC = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}
# Starlette spools an uploaded part over 1 MB to a temporary file; a face photo is kept in memory instead (the
# guard below bounds every body to MAX_BODY). This process serves only this app.
MultiPartParser.spool_max_size = MAX_BODY


@dataclass
class UiSession:
    """What the app serves: the client, its tasks and photos, and the session's secrets."""

    client: Client
    server_label: str
    secret: str  # in the printed link; its hash is the cookie
    host: str = "127.0.0.1"
    port: int = 0
    standin: Any = None  # TESTING ONLY: a FusedModel whose clear embeddings stand in for encrypted inference

    def __post_init__(self) -> None:
        self.cookie = hashlib.sha256(f"cookie:{self.secret}".encode()).hexdigest()
        self.csrf = hmac.new(self.secret.encode(), b"csrf", hashlib.sha256).hexdigest()
        self.tasks = TaskRunner(self.client.cancel_job)
        self.photos = PhotoShelf()
        self.plots = Path(tempfile.mkdtemp(prefix="cryptoface-ui-"))  # ROC plots of evaluation tasks (0700)

    @property
    def cookie_name(self) -> str:
        """Browsers scope cookies by host, not port: one name per app port keeps two sessions apart."""
        return f"{COOKIE}_{self.port}"

    @property
    def header(self) -> str:
        label = f"key set {self.client.key_id[:12]} · server {self.server_label}"
        return label + (" · TESTING ONLY: stand-in templates, no encrypted inference" if self.standin else "")

    def allowed_hosts(self) -> set[str]:
        own = f"[{self.host}]" if ":" in self.host else self.host
        return {f"{h}:{self.port}" for h in ("127.0.0.1", "localhost", "[::1]", own)}


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def check_loopback(host: str) -> str:
    """``host`` if it is a loopback address or ``localhost``; the app holds a secret key and serves no one else."""
    if host != "localhost":
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise ValueError
        except ValueError:
            raise CryptoFaceError(f"the web app listens on this machine only (127.0.0.1); {host!r} is not a loopback "
                                  "address") from None
    return host


def create_ui_app(session: UiSession) -> FastAPI:
    """The web app over ``session`` (routes below; every one but /login and /static needs the session cookie)."""
    app = FastAPI(title="CryptoFace", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.session = session
    s = session

    def html(title: str, body: str, here: str, status: int = 200, refresh: bool = False) -> HTMLResponse:
        return HTMLResponse(pages.page(title, body, here=here, header=s.header, refresh=refresh), status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        host = request.headers.get("host", "")
        if s.port and host not in s.allowed_hosts():
            return _secure(Response("wrong host", status_code=421, media_type="text/plain"))
        length = request.headers.get("content-length")
        if length is None and request.method not in ("GET", "HEAD"):  # a chunked body would escape the size bound
            return _secure(Response("a body needs a Content-Length", status_code=411, media_type="text/plain"))
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return _secure(Response("request too large", status_code=413, media_type="text/plain"))
        path = request.url.path
        if not (path == "/login" or path.startswith("/static/")):
            if not hmac.compare_digest(request.cookies.get(s.cookie_name, ""), s.cookie):
                body = pages.page("Sign in", pages.message_page(
                    "Open the link that 'cryptoface ui' printed in its terminal (it holds this session's secret)."),
                    here="", header="")
                return _secure(HTMLResponse(body, status_code=401))
            if request.method not in ("GET", "HEAD"):
                origin = request.headers.get("origin")
                if origin is not None and origin.removeprefix("http://") not in s.allowed_hosts():
                    return _secure(Response("cross-origin request refused", status_code=403, media_type="text/plain"))
        return _secure(await call_next(request))

    async def form_csrf(request: Request) -> None:
        form = await request.form()
        if not hmac.compare_digest(str(form.get("csrf", "")), s.csrf):
            raise _Refused(403, "the form is stale or came from another site; reload the page and try again")

    @app.exception_handler(_Refused)
    async def refused(request: Request, exc: _Refused) -> HTMLResponse:
        return html("Refused", pages.alert(exc.message), "", exc.status)

    # -- session --------------------------------------------------------------------------------------
    @app.get("/login")
    def login(token: str = "") -> Response:
        if not hmac.compare_digest(token, s.secret):
            return html("Sign in", pages.alert("This link is not valid for this app session."), "", 401)
        r = RedirectResponse("/", status_code=303)
        r.set_cookie(s.cookie_name, s.cookie, httponly=True, samesite="strict", path="/")
        return r

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            return Response("not found", status_code=404, media_type="text/plain")
        data = resources.files("cryptoface.ui").joinpath("static", name).read_bytes()
        return Response(data, media_type=STATIC[name])

    # -- photo ----------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def home() -> HTMLResponse:
        return html("Photo", pages.home(s.csrf), "/")

    @app.post("/photos")
    async def upload(request: Request, photo: Annotated[UploadFile, File()]) -> Response:
        await form_csrf(request)
        data = await photo.read(MAX_PHOTO_BYTES + 1)
        try:
            p = await run_in_threadpool(read_photo, data, photo.filename or "photo")
        except CryptoFaceError as exc:  # no face, face too small, not an image: the detector's own words
            return html("Photo", pages.home(s.csrf, str(exc)), "/", 422)
        s.photos.add(p)
        return RedirectResponse(f"/photos/{p.photo_id}", status_code=303)

    def _photo(photo_id: str) -> Any:
        return _found(s.photos.get(photo_id), "this photo is no longer here (the app keeps the last 32 for an hour); "
                                               "upload it again")

    @app.get("/photos/{photo_id}", response_class=HTMLResponse)
    def photo_page(photo_id: str) -> HTMLResponse:
        p = _photo(photo_id)
        subjects, error = _subjects()
        return html("Aligned face", pages.photo_page(p, subjects, s.csrf, error), "/")

    @app.get("/photos/{photo_id}/preview.png")
    def preview(photo_id: str) -> Response:
        return Response(_photo(photo_id).preview_png(), media_type="image/png")

    @app.get("/photos/{photo_id}/crop.png")
    def crop(photo_id: str) -> Response:
        return Response(_photo(photo_id).crop_png(), media_type="image/png")

    def _name(value: str) -> str:
        try:
            return validate_name(value, "subject name")
        except CryptoFaceError as exc:
            raise _Refused(422, str(exc)) from exc

    def _started(task: Any) -> RedirectResponse:
        return RedirectResponse(f"/tasks/{task.task_id}", status_code=303)

    @app.post("/photos/{photo_id}/enrol")
    async def enrol(request: Request, photo_id: str, subject: Annotated[str, Form()],
                    add: Annotated[str, Form()] = "") -> Response:
        await form_csrf(request)
        p, name = _photo(photo_id), _name(subject)
        verb = "Add a template to" if add else "Enrol"
        return _started(s.tasks.submit("enrol", f"{verb} {name}",
                                       lambda run: operations.enrol(s.client, p, name, bool(add), run, s.standin)))

    @app.post("/photos/{photo_id}/verify")
    async def verify(request: Request, photo_id: str, subject: Annotated[str, Form()]) -> Response:
        await form_csrf(request)
        p, name = _photo(photo_id), _name(subject)
        return _started(s.tasks.submit("verify", f"Verify {p.name} as {name}",
                                       lambda run: operations.verify(s.client, p, name, run, s.standin)))

    @app.post("/photos/{photo_id}/identify")
    async def identify(request: Request, photo_id: str) -> Response:
        await form_csrf(request)
        p = _photo(photo_id)
        return _started(s.tasks.submit("identify", f"Identify {p.name}",
                                       lambda run: operations.identify(s.client, p, run, s.standin)))

    # -- tasks ----------------------------------------------------------------------------------------
    def _task(task_id: str) -> Any:
        return _found(s.tasks.get(task_id), "no such task in this app session")

    @app.get("/tasks", response_class=HTMLResponse)
    def tasks() -> HTMLResponse:
        return html("Tasks", pages.tasks_page(s.tasks.all()), "/tasks")

    @app.get("/tasks/{task_id}", response_class=HTMLResponse)
    def task(task_id: str) -> HTMLResponse:
        t = _task(task_id)
        return html(t.title, pages.task_page(t, s.csrf), "/tasks", refresh=t.ended is None)

    @app.get("/api/tasks/{task_id}")
    def task_json(task_id: str) -> JSONResponse:
        view = s.tasks.view(task_id)
        if view is None:
            return JSONResponse({"error": "unknown_task"}, status_code=404)
        return JSONResponse(view)

    @app.post("/tasks/{task_id}/cancel")
    async def cancel(request: Request, task_id: str) -> Response:
        await form_csrf(request)
        _task(task_id)
        await run_in_threadpool(s.tasks.cancel, task_id)
        return RedirectResponse(f"/tasks/{task_id}", status_code=303)

    @app.get("/tasks/{task_id}/roc.png")
    def roc(task_id: str) -> Response:
        t = _task(task_id)
        path = s.plots / f"{t.task_id}.png"
        if t.kind != "evaluate" or not path.is_file():
            return Response("no plot", status_code=404, media_type="text/plain")
        return Response(path.read_bytes(), media_type="image/png")

    # -- subjects -------------------------------------------------------------------------------------
    def _subjects() -> tuple[list[Any], str | None]:
        try:
            return s.client.subjects(), None
        except CryptoFaceError as exc:
            return [], f"the server could not list the subjects: {exc}"

    @app.get("/subjects", response_class=HTMLResponse)
    def subjects() -> HTMLResponse:
        found, error = _subjects()
        return html("Subjects", pages.subjects_page(found, s.csrf, error), "/subjects")

    def _subject(subject_id: int) -> Any:
        found, _ = _subjects()
        match = next((x for x in found if x.subject_id == subject_id), None)
        if match is None:
            raise _Refused(404, "no such subject under this key set")
        return match

    @app.post("/subjects/{subject_id}/delete")
    async def delete_subject(request: Request, subject_id: int) -> Response:
        await form_csrf(request)
        subject = await run_in_threadpool(_subject, subject_id)
        try:
            await run_in_threadpool(s.client.delete_subject_id, subject.subject_id)
        except CryptoFaceError as exc:  # deleted meanwhile (a second click), or the server refused
            found, _ = _subjects()
            return html("Subjects", pages.subjects_page(found, s.csrf, f"not deleted: {exc}"), "/subjects", 409)
        return RedirectResponse("/subjects", status_code=303)

    @app.post("/subjects/{subject_id}/templates")
    async def add_template(request: Request, subject_id: int, photo: Annotated[UploadFile, File()]) -> Response:
        await form_csrf(request)
        subject = await run_in_threadpool(_subject, subject_id)
        data = await photo.read(MAX_PHOTO_BYTES + 1)
        try:
            p = await run_in_threadpool(read_photo, data, photo.filename or "photo")
        except CryptoFaceError as exc:
            found, _ = _subjects()
            return html("Subjects", pages.subjects_page(found, s.csrf, str(exc)), "/subjects", 422)
        s.photos.add(p)
        name = subject.name
        return _started(s.tasks.submit("enrol", f"Add a template to {name}",
                                       lambda run: operations.enrol(s.client, p, name, True, run, s.standin)))

    # -- settings and evaluation ----------------------------------------------------------------------
    @app.get("/settings", response_class=HTMLResponse)
    def settings() -> HTMLResponse:
        keys = s.client.keys
        params = keys.params
        try:
            health: dict[str, Any] | None = s.client.transport.health()
        except CryptoFaceError:
            health = None
        rows = [("key set id", keys.key_id), ("backend", keys.backend_name),
                ("CKKS parameters", params_to_json(params)),
                ("ring, slots", f"N = 2^{params.log_ring}, {params.slots} slots"),
                ("public and evaluation keys", f"{_size(keys.evaluation_key_bytes())} in {len(keys.key_kinds)} key(s)"),
                ("matching ring", "none: templates are matched in the network's ring" if keys.match is None else
                 f"key set {keys.match.key_id[:12]}, N = 2^{keys.match.params.log_ring}, "
                 f"{keys.match.params.levels} levels, {_size(keys.match.evaluation_key_bytes())} of keys"),
                ("key home", str(keys.home) if keys.home is not None else "(in memory)"),
                ("server URL", s.server_label), ("protocol", s.client.protocol),
                ("decision threshold (cosine)", f"{s.client.threshold:.4f}")]
        return html("Settings", pages.settings_page(rows, health), "/settings")

    @app.get("/eval", response_class=HTMLResponse)
    def eval_form() -> HTMLResponse:
        return html("Evaluation", pages.eval_page(s.csrf), "/eval")

    @app.post("/eval")
    async def evaluate(request: Request, csv: Annotated[str, Form()], model: Annotated[str, Form()] = "") -> Response:
        await form_csrf(request)
        path = Path(csv).expanduser()
        if not path.is_file():
            return html("Evaluation", pages.eval_page(s.csrf, f"no file at {path}"), "/eval", 422)
        if model not in ("", "sface"):
            raise _Refused(422, "unknown model")

        def work(run: Any) -> dict[str, Any]:
            return operations.evaluate(path, model or None, run, s.plots / f"{run.task.task_id}.png")

        return _started(s.tasks.submit("evaluate", f"Evaluate {path.name}", work))

    return app


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _found(value: Any, message: str) -> Any:
    """``value``, or a 404 page saying ``message`` when it is None."""
    if value is None:
        raise _Refused(404, message)
    return value


def _size(n: int) -> str:
    return f"{n / 1e9:,.2f} GB" if n >= 1e9 else f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} kB"


def _secure(response: Response) -> Response:
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    return response


__all__ = ["UiSession", "check_loopback", "create_ui_app", "new_secret"]
