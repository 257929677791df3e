"""Request limits chosen by the route itself: body size (413), heavy-request slots (503) and body memory.

Each route declares its :class:`Policy` with :func:`policy`; :class:`RouteLimits` (ASGI middleware) finds the
route the way the router does (Starlette's ``route.matches``), never from the path's text, so a subject or a key
kind named ``keys`` gets no larger limit. Before the body is read it

* checks the credential the route asks for (401, or 503 when admin routes are off), so a stranger costs one
  lookup, never a parsed body or a heavy slot; the dependencies of the routes check it again if it is missing;
* answers 413 when Content-Length is over the route's limit, and counts a chunked body as it streams, answering
  413 the moment it passes the limit (the app then sees a disconnect, and whatever it answers is dropped);
* takes a heavy slot for routes that are heavy whatever their body says (key upload, registration), or 503;
* charges the body's bytes (x :data:`JSON_FACTOR` or :data:`RAW_FACTOR`: the raw bytes, the parsed text and the
  decoded ciphertexts) to the memory budget, or 503, so many large bodies at once cannot exhaust memory.

Every early answer reads and discards the rest of the body first (bounded by :data:`DRAIN_BYTES` and
:data:`DRAIN_SECONDS`): an HTTP/1.1 client reads the answer only once its body is sent, so closing on unread bytes
would reset the connection and the client would never see its 413, 401 or 503. Requests on no route get the
smallest limit. Requests whose probe carries images take their heavy slot in the service, once the body says so.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, Match

from cryptoface.errors import CryptoFaceError
from cryptoface.service.budget import MemoryBudget
from cryptoface.service.errors import BusyError

KIB, MIB, GIB = 1024, 1024**2, 1024**3
JSON_LIMIT = 64 * MIB  # matching routes: a few base64 ciphertexts
REGISTRATION_LIMIT = 64 * MIB  # one public key
KEY_LIMIT = 1 * GIB  # one raw evaluation key (desilofhe's top-level rotation key: 131 MB)
ADMIN_LIMIT = 64 * KIB
DEFAULT_LIMIT = 64 * KIB  # no route, or a route without a body
MAX_COMPARE_PAIRS = 128  # pairs per compare request: one score ciphertext's capacity at N = 2^16
JSON_FACTOR = 3
RAW_FACTOR = 2
DRAIN_BYTES = 256 * MIB  # a refused body is read and discarded up to this much (a real evaluation key fits) ...
DRAIN_SECONDS = 30.0  # ... and this long, before the answer; past either the connection is closed
_POLICY = "__cryptoface_policy__"
CALLER = "cryptoface_caller"  # key in the ASGI scope state: the Caller the middleware authenticated
F = TypeVar("F", bound=Callable[..., Any])
Authenticate = Callable[[str, dict[str, str]], Any]  # (policy auth kind, lower-cased headers) -> Caller, or raises
StatusOf = Callable[[BaseException], tuple[int, str]]  # error -> (HTTP status, code): the app's one table


@dataclass(frozen=True)
class Policy:
    """A route's limits: which body limit applies, whether it is heavy before its body is read, its credential."""

    body: str = "small"  # "small" | "json" | "registration" | "key": which configured limit applies
    heavy: bool = False  # takes a heavy slot before its body is read
    raw: bool = False  # raw octet-stream body (charged x RAW_FACTOR instead of JSON_FACTOR)
    auth: str | None = None  # "tenant" | "admin" | "any": checked before the body is read; None: public


def policy(body: str = "small", *, heavy: bool = False, raw: bool = False,
           auth: str | None = "tenant") -> Callable[[F], F]:
    """Decorator declaring an endpoint's limits and credential (read by :class:`RouteLimits`)."""

    def mark(fn: F) -> F:
        setattr(fn, _POLICY, Policy(body, heavy, raw, auth))
        return fn

    return mark


def route_policy(route: BaseRoute | None) -> Policy:
    return getattr(getattr(route, "endpoint", None), _POLICY, Policy())


class HeavySlots:
    """At most ``n`` heavy requests (inference from images, key upload, registration) at once; the next is a 503."""

    def __init__(self, n: int, retry_after: int = 30) -> None:
        if n < 1:
            raise ValueError("max_heavy must be at least 1")
        self.n = n
        self.retry_after = retry_after
        self._sem = threading.BoundedSemaphore(n)
        self.refusals = 0

    def acquire(self) -> None:
        """Take a slot now or raise BusyError (never waits: a queued request would hold its body meanwhile)."""
        if not self._sem.acquire(blocking=False):
            self.refusals += 1
            raise BusyError(f"the server is busy ({self.n} heavy request(s) running); retry later", self.retry_after)

    def release(self) -> None:
        self._sem.release()

    @contextmanager
    def hold(self, heavy: bool = True) -> Iterator[None]:
        """A slot for a block when ``heavy``; nothing otherwise."""
        if not heavy:
            yield
            return
        self.acquire()
        try:
            yield
        finally:
            self.release()


class _TooLarge(Exception):
    pass


class RouteLimits:
    """ASGI middleware applying each route's :class:`Policy` (see the module docstring)."""

    def __init__(self, app: Any, *, routes: Sequence[BaseRoute], limits: dict[str, int], slots: HeavySlots,
                 budget: MemoryBudget, authenticate: Authenticate, status_of: StatusOf) -> None:
        self.app, self.routes, self.limits, self.slots, self.budget = app, routes, limits, slots, budget
        self.authenticate, self.status_of = authenticate, status_of

    def _route(self, scope: dict) -> BaseRoute | None:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route
        return None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        pol = route_policy(self._route(scope))
        limit = self.limits.get(pol.body, DEFAULT_LIMIT)
        declared = _content_length(scope)
        chunked = any(name == b"transfer-encoding" for name, _ in scope.get("headers", []))
        unread = chunked or bool(declared)  # a body this middleware has not read yet
        if declared is not None and declared > limit:
            await _refuse(receive, send, unread, 413, "payload_too_large", f"request body exceeds {limit} bytes")
            return
        if pol.auth is not None:  # before any body byte is read or any slot taken: strangers cost a lookup only
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            try:
                caller = await run_in_threadpool(self.authenticate, pol.auth, headers)
            except CryptoFaceError as exc:
                status, code = self.status_of(exc)
                await _refuse(receive, send, unread, status, code, str(exc))
                return
            scope.setdefault("state", {})[CALLER] = caller
        body = limit if chunked else (declared or 0)  # a body of unknown length may be as long as the limit
        charge = body * (RAW_FACTOR if pol.raw else JSON_FACTOR)
        try:
            with self.slots.hold(pol.heavy), self.budget.reserve(charge, "a request body"):
                await self._limited(scope, receive, send, limit)
        except BusyError as exc:
            await _refuse(receive, send, unread, 503, "busy", str(exc), retry_after=exc.retry_after)

    async def _limited(self, scope: dict, receive: Any, send: Any, limit: int) -> None:
        seen = 0
        refused = False
        more = True  # whether the client has more body to send

        async def counted_receive() -> dict:
            nonlocal seen, refused, more
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                more = bool(message.get("more_body", False))
                if seen > limit:
                    refused = True
                    raise _TooLarge
            else:
                more = False
            return message

        async def guarded_send(message: dict) -> None:
            if not refused:  # after our 413 the app's own answer (400, disconnect) is dropped
                await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _TooLarge:
            pass
        except Exception:
            if not refused:
                raise
        if refused:
            await _refuse(receive, send, more, 413, "payload_too_large", f"request body exceeds {limit} bytes")


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _drain(receive: Any) -> bool:
    """Read and discard the rest of a refused body, in bounded bytes and time; True if it all arrived.

    An HTTP/1.1 client writes its whole body before it reads the answer: closing on unread bytes resets the
    connection and the client never sees the 413/401/503. Discarding costs bandwidth, never memory."""
    got = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + DRAIN_SECONDS
    try:
        while got <= DRAIN_BYTES:
            message = await asyncio.wait_for(receive(), timeout=max(0.0, end - loop.time()))
            if message["type"] != "http.request":
                return False
            got += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
    except asyncio.TimeoutError:
        pass
    return False


async def _refuse(receive: Any, send: Any, unread: bool, status: int, code: str, detail: str,
                  retry_after: int | None = None) -> None:
    """Answer an error before (or instead of) the app, draining the body first so the client hears it."""
    complete = await _drain(receive) if unread else True
    await _send_error(send, status, code, detail, retry_after=retry_after, close=not complete)


async def _send_error(send: Any, status: int, code: str, detail: str, retry_after: int | None = None,
                      close: bool = False) -> None:
    body = json.dumps({"error": code, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(int(retry_after)).encode()))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


__all__ = [
    "ADMIN_LIMIT",
    "DEFAULT_LIMIT",
    "JSON_LIMIT",
    "KEY_LIMIT",
    "REGISTRATION_LIMIT",
    "HeavySlots",
    "Policy",
    "RouteLimits",
    "policy",
    "route_policy",
]
