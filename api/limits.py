"""Requests refused before any route reads them, in EngageLab's error shape: a body over
`max_body_bytes` (413), and NUL characters, which PostgreSQL cannot store in text, in the path,
the query or a JSON body's strings (400)."""

import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body

# `\u0000` in JSON text, unless its backslash is itself escaped (`\\u0000` is 7 characters).
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


# How much of a refused body is read and dropped before the 413, in limits.
DRAIN_FACTOR = 16


class BodyTooLarge(Exception):
    pass


async def _drain(receive: Receive, most: int) -> None:
    read = 0
    while read <= most:
        message = await receive()
        read += len(message.get("body", b""))
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


class RequestLimits:
    """ASGI middleware. The body is read whole (routes read it whole anyway) and handed on; one
    larger than the limit is refused by its Content-Length, or as soon as the stream passes it."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if "\x00" in path or b"%00" in scope.get("query_string", b""):
            where = "path" if "\x00" in path else "query"
            await _refuse(send, 400, f"{where}: a NUL character is not allowed", where)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        try:
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                raise BodyTooLarge
            body = await self._read(receive)
        except BodyTooLarge:
            # Read (and drop) what the client is still sending, up to a bound, so that it is
            # still listening for the answer; past the bound the connection is closed.
            await _drain(receive, DRAIN_FACTOR * self.max_body_bytes)
            await _refuse(send, 413, self._too_large(), "body")
            return
        if b"\\u0000" in body and _NUL_ESCAPE.search(body):
            await _refuse(send, 400, "body: a NUL character (\\u0000) is not allowed", "body")
            return

        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _too_large(self) -> str:
        return f"body: larger than {self.max_body_bytes} bytes (RELANCE_MAX_BODY_BYTES)"


async def _refuse(send: Send, status: int, message: str, field: str) -> None:
    details: list[dict[str, Any]] = [{"field": field, "message": message}]
    payload = json.dumps(error_body(status, message, details)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    if status == 413:
        headers.append((b"connection", b"close"))  # the rest of the body is not read
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
