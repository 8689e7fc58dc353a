"""Who may call the API and how much: API keys and their names, per-key rate limits in requests and in
tokens, request size limits.

Keys are hashed as soon as they are read and only their SHA-256 digests and names travel to the gateway
replica, so neither a Ray actor's arguments, a metric's labels nor a log line hold a usable key.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from solo.errors import SoloError
from solo.serving.protocol import ErrorDetail, ErrorResponse

KEYS_ENV = "SOLO_API_KEYS"  # comma-separated `NAME=KEY` items, or bare keys
ANONYMOUS = "anonymous"  # the key name of every request when no keys are configured
OPEN_PATHS = frozenset({"/health", "/"})  # load balancers and liveness probes; the chat page, which asks for a key
OPEN_PREFIXES = ("/static/",)  # the chat page's script and style
KEY_NAME = re.compile(r"^[A-Za-z0-9_.@-]+$")  # a Prometheus label value and a log word, without quoting


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def default_key_name(key_digest: str) -> str:
    """The name of a key given without one: its digest's first 8 hex digits, which say nothing of the key."""
    return f"key-{key_digest[:8]}"


def read_api_keys(keys_file: str | None = None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The configured keys as {digest: name}: $SOLO_API_KEYS (`NAME=KEY` items or bare keys, comma-separated)
    and `keys_file` (a `NAME KEY` line or a bare `KEY` line each; `#` starts a comment line). A mistake is a
    SoloError that says where it is and never quotes it, since it may be a piece of a key."""
    environ = os.environ if environ is None else environ
    entries: list[tuple[str | None, str, str]] = []  # (name, or None; key; where it was given)
    for i, item in enumerate(environ.get(KEYS_ENV, "").split(","), 1):
        name, named, key = item.partition("=")
        if item.strip():
            entries.append((name.strip() if named else None, (key if named else name).strip(),
                            f"item {i} of ${KEYS_ENV}"))
    if keys_file:
        for number, line in enumerate(Path(keys_file).expanduser().read_text().splitlines(), 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) > 2:
                raise SoloError(f"line {number} of {keys_file} has {len(fields)} fields: write `NAME KEY` or `KEY`")
            entries.append((fields[0] if len(fields) == 2 else None, fields[-1], f"line {number} of {keys_file}"))
    keys: dict[str, str] = {}
    for name, key, where in entries:
        if not key:
            raise SoloError(f"{where} names a key but gives none: write NAME=KEY")
        key_digest = digest(key)
        name = default_key_name(key_digest) if name is None else name
        if not KEY_NAME.match(name):
            raise SoloError(f"{where}: a key's name is letters, digits and . _ - @ only")
        if keys.get(key_digest, name) != name:
            raise SoloError(f"{where} gives again the key named {keys[key_digest]!r}, under another name")
        keys[key_digest] = name
    return keys


class RateLimiter:
    """A token bucket per caller: `per_minute` requests a minute, in bursts of up to as many."""

    def __init__(self, per_minute: int, clock=time.monotonic) -> None:
        self.per_minute, self.clock = per_minute, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # caller: (tokens, when)

    def retry_after(self, caller: str) -> int:
        """0 when the call may go ahead (and is counted), else the seconds to wait."""
        if self.per_minute <= 0:
            return 0
        now, rate = self.clock(), self.per_minute / 60
        tokens, then = self._buckets.get(caller, (self.per_minute, now))
        tokens = min(self.per_minute, tokens + (now - then) * rate)
        if tokens >= 1:
            self._buckets[caller] = (tokens - 1, now)
            return 0
        self._buckets[caller] = (tokens, now)
        return max(1, math.ceil((1 - tokens) / rate))


class TokenRateLimiter:
    """Tokens (prompt and completion) a minute per caller, over a sliding minute: a caller under its limit
    is admitted, and what its request used counts from when the request ends."""

    WINDOW_S = 60.0

    def __init__(self, per_minute: int, clock=time.monotonic) -> None:
        self.per_minute, self.clock = per_minute, clock
        self._spent: dict[str, collections.deque[tuple[float, int]]] = {}  # caller: (when, tokens), oldest first

    def retry_after(self, caller: str) -> int:
        """0 when `caller` is under its limit, else the seconds until enough of its minute has passed."""
        if self.per_minute <= 0 or caller not in self._spent:
            return 0
        now, spent = self.clock(), self._spent[caller]
        while spent and spent[0][0] <= now - self.WINDOW_S:
            spent.popleft()
        used = sum(tokens for _, tokens in spent)
        if used < self.per_minute:
            if not spent:
                del self._spent[caller]
            return 0
        # The oldest leave the window first, each at its `when` + WINDOW_S: wait for the one after which
        # what is left is under the limit.
        excess = used - self.per_minute
        left_by = itertools.accumulate(tokens for _, tokens in spent)
        when = next(when for (when, _), gone in zip(spent, left_by) if gone > excess)
        return max(1, math.ceil(when + self.WINDOW_S - now))

    def record(self, caller: str, tokens: int) -> None:
        if self.per_minute > 0 and tokens > 0:
            self._spent.setdefault(caller, collections.deque()).append((self.clock(), tokens))


@dataclass(frozen=True)
class Caller:
    """Who sent a request, as the guard found it."""

    key_name: str  # its API key's name; `anonymous` when no keys are configured
    limited_as: str  # whom its rate limits count against: the key's name, or the client's address without keys


@dataclass(frozen=True)
class Limits:
    api_keys: Mapping[str, str] = field(default_factory=dict)  # {digest: name}; empty: no key needed
    rate_limit_rpm: int = 0  # requests a minute per key (per client address without keys); 0: none
    rate_limit_tpm: int = 0  # tokens (prompt and completion) a minute, likewise; 0: none
    max_request_bytes: int = 1 << 20
    max_queue: int = 256  # generation requests admitted at once; more get a 503


def is_open(path: str) -> bool:
    """Whether `path` is served to anyone, with no key and no limit."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class Guard:
    """ASGI middleware answering 413, 401 and 429 (requests a minute) before a request reaches a route, and
    naming its `Caller` in the request's state for the routes (which apply the limit in tokens)."""

    def __init__(self, app, limits: Limits, clock=time.monotonic) -> None:
        self.app, self.limits = app, limits
        self.rate = RateLimiter(limits.rate_limit_rpm, clock)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        size = headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > self.limits.max_request_bytes):
            await _refuse(send, 413, f"The request body is over {self.limits.max_request_bytes} bytes.")
            return
        caller = Caller(ANONYMOUS, (scope.get("client") or ("unknown",))[0])
        if self.limits.api_keys:
            scheme, _, key = headers.get("authorization", "").partition(" ")
            name = self.limits.api_keys.get(digest(key.strip())) if scheme.lower() == "bearer" else None
            if name is None:
                await _refuse(send, 401, "Incorrect API key provided. Pass it as `Authorization: Bearer KEY`.",
                              code="invalid_api_key")
                return
            caller = Caller(name, name)
        wait = self.rate.retry_after(caller.limited_as)
        if wait:
            await _refuse(send, 429, "Rate limit reached for requests. Please try again later.",
                          type="rate_limit_error", code="rate_limit_exceeded", retry_after=wait)
            return
        if size is None:
            # A chunked body announces no size: read it here, up to the limit, and replay it.
            receive = await _buffered(receive, self.limits.max_request_bytes)
            if receive is None:
                await _refuse(send, 413, f"The request body is over {self.limits.max_request_bytes} bytes.")
                return
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


async def _buffered(receive, limit: int):
    """The whole body as one message, or None once it passes `limit`. (The server enforces a
    declared Content-Length, so only bodies without one need this.)"""
    chunks, seen = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        seen += len(chunks[-1])
        if seen > limit:
            return None
        if not message.get("more_body"):
            break
    replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

    async def replaying_receive():
        return replay.pop() if replay else await receive()

    return replaying_receive


async def _refuse(send, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                  retry_after: int | None = None) -> None:
    body = ErrorResponse(error=ErrorDetail(message=message, type=type, code=code)).model_dump_json().encode()
    headers: Iterable[tuple[bytes, bytes]] = [(b"content-type", b"application/json"),
                                              (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers = [*headers, (b"retry-after", str(retry_after).encode())]
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    await send({"type": "http.response.body", "body": body})


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")

