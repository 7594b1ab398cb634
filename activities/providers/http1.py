"""Keep-alive HTTP/1.1 POSTs to one origin, for a provider's hot path.

FCM's send is one POST of a small JSON body that answers a status, maybe a `Retry-After` and
a small JSON body. aiohttp spent about 250 µs of the worker's CPU on each (its request and
response objects, header multidicts, tracing hooks, cookie jar, a stream reader per answer),
which was half of what a fan-out send cost in all (`bench/bench_http_client.py`,
`bench/profiles/fanout-http1.txt`). Here a request is one bytes write on a kept connection and
its answer is parsed by httptools (the llhttp parser uvicorn uses): about 80 µs for the same
request to the same server.

What it does, and what it leaves out:
- HTTP/1.1 over TCP, or TLS for `https://` (the system's CAs unless given a context); no proxy,
  no redirect, no compression asked for (aiohttp's session there took none of them either).
- One request at a time per connection; a connection answered with `Connection: close`, cut,
  cancelled or timed out is closed, never reused. An idle connection the server has closed is
  dropped when it is next taken.
- A POST is not sent again on another connection when its connection breaks: whether the
  server acted on it is unknown, so the caller decides (FCM: a transient failure, retried
  within its budget, with the same notification tag).
- Errors are `ConnectionError`s (`Http1Error` for an answer that is not HTTP)."""

import asyncio
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools


class Http1Error(ConnectionError):
    """The connection broke, or the server's answer could not be read as HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    retry_after: str | None
    body: bytes


class _Connection(asyncio.Protocol):
    """One connection; one request at a time; the answer as httptools' callbacks build it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._body: list[bytes] = []
        self._retry_after: str | None = None
        self._framed = False  # a Content-Length or chunked answer: EOF before its end is an error
        self._headers_done = False
        self._keep_alive = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: this connection is not to be trusted
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(Http1Error("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(Http1Error(f"not an HTTP/1.1 answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and not self._framed:  # the body ran to the end of the connection
            self._complete()
        else:
            self._fail(Http1Error("the server closed the connection before answering"))

    # httptools' callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"retry-after":
            self._retry_after = value.decode("latin-1").strip()
        elif name in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._headers_done = True
        # Asked here: once the message is complete, llhttp has reset what this reads.
        self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:  # 1xx: the answer proper comes next
            self._headers_done, self._framed, self._retry_after = False, False, None
            return
        self._complete()

    # the client's side
    async def request(self, data: bytes) -> Answer:
        assert self.transport is not None and self._waiter is None
        waiter: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self.transport.write(data)
        try:
            return await waiter
        except BaseException:  # cancelled or timed out mid-answer: the connection's state is lost
            self.close()
            raise

    def reusable(self) -> bool:
        return not self.closed and self._keep_alive

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        answer = Answer(self._parser.get_status_code(), self._retry_after, b"".join(self._body))
        self._body, self._retry_after = [], None
        self._framed = self._headers_done = False
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class Http1Origin:
    """POSTs to one `scheme://host[:port]`, over connections kept open between requests.

    As many connections are open as requests have been in flight at once; the caller bounds
    that (FCM: its pool of senders)."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {url!r}")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._ssl = (ssl_context or ssl.create_default_context()) if self._tls else None
        host = self._host.encode("idna").decode("ascii")
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        self._authority = (
            host if self._port == (443 if self._tls else 80) else f"{host}:{self._port}"
        )
        self._idle: list[_Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def request_head(self, path: str, headers: dict[str, str]) -> bytes:
        """The start of a POST to `path` with these headers, up to its Content-Length: made
        once per path and headers, and reused for every body (`post`)."""
        # Nothing from outside (a project id, a token) may end a line early: it would add
        # headers of its own, or a second request.
        if not path.startswith("/") or any(c in path for c in " \r\n\0"):
            raise ValueError(f"not a request path: {path!r}")
        for name, value in headers.items():
            if any(c in name + value for c in "\r\n\0") or ":" in name:
                raise ValueError(f"header {name!r}: a line break or NUL in it")
        lines = [f"POST {path} HTTP/1.1", f"Host: {self._authority}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")

    async def post(self, head: bytes, body: bytes) -> Answer:
        """POST `body` with a head from `request_head`."""
        connection = self._idle_connection() or await self._connect()
        answer = await connection.request(b"%s%d\r\n\r\n%s" % (head, len(body), body))
        if connection.reusable():
            self._idle.append(connection)
        else:
            connection.close()
        return answer

    def _idle_connection(self) -> _Connection | None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # connections belong to the loop that opened them
            self._drop_idle()
            self._loop = loop
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                _Connection,
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._tls else None,
            )
        except ssl.SSLError as exc:
            raise Http1Error(f"TLS with {self._host}: {exc.reason or exc}") from exc
        return connection

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    async def aclose(self) -> None:
        self._drop_idle()
