"""Who may call the API and how much: API keys, per-key rate limits, request size limits.

Keys are hashed as soon as they are read and only their SHA-256 digests travel to the gateway
replica, so neither a Ray actor's arguments nor a memory dump hold a usable key.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from solo.serving.protocol import ErrorDetail, ErrorResponse

KEYS_ENV = "SOLO_API_KEYS"  # comma-separated
OPEN_PATHS = frozenset({"/health"})  # for load balancers and liveness probes


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_key_digests(keys_file: str | None = None, environ: dict[str, str] | None = None) -> frozenset[str]:
    """Digests of the keys in $SOLO_API_KEYS and in `keys_file` (one a line, `#` comments)."""
    environ = os.environ if environ is None else environ
    keys = [k.strip() for k in environ.get(KEYS_ENV, "").split(",")]
    if keys_file:
        lines = Path(keys_file).expanduser().read_text().splitlines()
        keys += [line.strip() for line in lines if not line.strip().startswith("#")]
    return frozenset(digest(k) for k in keys if k)


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


@dataclass(frozen=True)
class Limits:
    key_digests: frozenset[str] = field(default_factory=frozenset)  # empty: no key needed
    rate_limit_rpm: int = 0  # per key (per client address without keys); 0: none
    max_request_bytes: int = 1 << 20
    max_queue: int = 256  # generation requests admitted at once; more get a 503


class Guard:
    """ASGI middleware answering 413, 401 and 429 before a request reaches a route."""

    def __init__(self, app, limits: Limits, clock=time.monotonic) -> None:
        self.app, self.limits = app, limits
        self.rate = RateLimiter(limits.rate_limit_rpm, clock)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        size = headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > self.limits.max_request_bytes):
            await _refuse(send, 413, f"The request body is over {self.limits.max_request_bytes} bytes.")
            return
        caller = (scope.get("client") or ("unknown",))[0]
        if self.limits.key_digests:
            scheme, _, key = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or digest(key.strip()) not in self.limits.key_digests:
                await _refuse(send, 401, "Incorrect API key provided. Pass it as `Authorization: Bearer KEY`.",
                              code="invalid_api_key")
                return
            caller = digest(key.strip())
        wait = self.rate.retry_after(caller)
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

