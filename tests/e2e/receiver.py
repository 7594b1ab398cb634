"""A real HTTP callback receiver for the tests, served by uvicorn on loopback; it verifies both
signatures the way the README tells a customer to."""

import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@dataclass
class Delivery:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def rows(self) -> list[dict[str, Any]]:
        return list(json.loads(self.body)["rows"])


def verify(headers: dict[str, str], body: bytes, username: str, secret: str) -> bool:
    """The README's few lines: both signatures, and the username."""
    fields = dict(part.split("=", 1) for part in headers["x-callback-id"].split(";"))
    expected = hmac.new(
        secret.encode(),
        (fields["timestamp"] + fields["nonce"] + fields["username"]).encode(),
        hashlib.sha256,
    ).hexdigest()
    t, v1 = (part.split("=", 1)[1] for part in headers["x-relance-signature"].split(","))
    whole = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return (
        fields["username"] == username
        and hmac.compare_digest(expected, fields["signature"])
        and hmac.compare_digest(whole, v1)
    )


@dataclass
class Receiver:
    deliveries: list[Delivery] = field(default_factory=list)
    attempts: list[tuple[float, str, int]] = field(default_factory=list)
    # path -> how many next requests to answer 503 (-1: always)
    failing: dict[str, int] = field(default_factory=dict)
    # paths that never answer in time
    hanging: set[str] = field(default_factory=set)

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            body = await request.body()
            path = request.url.path
            if path in self.hanging:
                self.attempts.append((time.monotonic(), path, 0))
                await asyncio.sleep(5)  # past relance's 2 s timeout in these tests
            left = self.failing.get(path, 0)
            if left:
                self.failing[path] = left - 1 if left > 0 else left
                self.attempts.append((time.monotonic(), path, 503))
                return Response("not now", status_code=503)
            self.attempts.append((time.monotonic(), path, 200))
            self.deliveries.append(Delivery(time.monotonic(), path, dict(request.headers), body))
            return Response("ok")

        return Starlette(routes=[Route("/{path:path}", handle, methods=["POST"])])

    def event_ids(self, path: str | None = None) -> list[str]:
        return [
            row["event_id"]
            for d in self.deliveries
            if path is None or d.path == path
            for row in d.rows
        ]
