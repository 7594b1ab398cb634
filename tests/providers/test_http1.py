"""The providers' HTTP/1.1 client (activities/providers/http1.py) against real servers on
local sockets: aiohttp's web server for ordinary answers, and a raw asyncio server where a
test needs an answer aiohttp would not give (cut, garbage, no length)."""

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trustme
from aiohttp import web

from activities.providers.http1 import Http1Error, Http1Origin

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def aiohttp_server(
    app: web.Application, ssl_context: ssl.SSLContext | None = None, **options: float
) -> AsyncIterator[tuple[str, list[object]]]:
    """Serve `app`; yields its origin and the list of connections it was opened."""
    connections: list[object] = []

    @web.middleware
    async def note(request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
        if request.transport not in connections:
            connections.append(request.transport)
        return await handler(request)

    app.middlewares.append(note)
    runner = web.AppRunner(app, **options)  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}", connections
    finally:
        await runner.cleanup()


@asynccontextmanager
async def raw_server(handle: Handler) -> AsyncIterator[str]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


def echo_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {"X-Auth": request.headers.get("Authorization", "")}
        if request.query.get("retry"):
            headers["Retry-After"] = request.query["retry"]
        status = int(request.query.get("status", "200"))
        return web.Response(status=status, body=b"echo:" + body, headers=headers)

    async def chunked(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=200)
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b'{"name": ', b'"projects/p/messages/1"', b"}"):
            await response.write(part)
        await response.write_eof()
        return response

    async def close(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="bye", headers={"Connection": "close"})

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_post("/chunked", chunked)
    app.router.add_post("/close", close)
    return app


async def test_an_answer_is_read_whole_with_its_status_and_retry_after() -> None:
    async with aiohttp_server(echo_app()) as (origin, _):
        http = Http1Origin(origin)
        head = http.request_head("/echo?status=503&retry=7", {"Authorization": "Bearer t0k"})
        answer = await http.post(head, b'{"message": {}}')
        assert (answer.status, answer.retry_after) == (503, "7")
        assert answer.body == b'echo:{"message": {}}'
        plain = await http.post(http.request_head("/echo", {}), b"x" * 100_000)
        assert (plain.status, plain.retry_after, plain.body) == (
            200,
            None,
            b"echo:" + b"x" * 100_000,
        )
        chunked = await http.post(http.request_head("/chunked", {}), b"{}")
        assert chunked.body == b'{"name": "projects/p/messages/1"}'
        await http.aclose()


async def test_connections_are_kept_and_reused() -> None:
    async with aiohttp_server(echo_app()) as (origin, connections):
        http = Http1Origin(origin)
        head = http.request_head("/echo", {})
        for i in range(20):
            assert (await http.post(head, b"%d" % i)).body == b"echo:%d" % i
        assert len(connections) == 1
        answers = await asyncio.gather(*(http.post(head, b"%d" % i) for i in range(5)))
        assert [a.body for a in answers] == [b"echo:%d" % i for i in range(5)]
        assert len(connections) == 5  # five at once: four more, then all five kept
        await asyncio.gather(*(http.post(head, b"again") for _ in range(5)))
        assert len(connections) == 5
        await http.aclose()


async def test_a_connection_the_server_closes_is_not_reused() -> None:
    async with aiohttp_server(echo_app(), keepalive_timeout=0.2) as (origin, connections):
        http = Http1Origin(origin)
        assert (await http.post(http.request_head("/close", {}), b"")).body == b"bye"
        assert (await http.post(http.request_head("/echo", {}), b"1")).status == 200
        assert len(connections) == 2  # "Connection: close" was honoured
        await asyncio.sleep(0.6)  # the server drops the idle connection
        assert (await http.post(http.request_head("/echo", {}), b"2")).body == b"echo:2"
        assert len(connections) == 3
        await http.aclose()


async def test_a_cut_or_garbled_answer_is_a_connection_error_and_the_next_request_works() -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                request = await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            seen.append(request)
            body = request.split(b"\r\n\r\n", 1)[1]
            if body == b"cut":  # a half answer, then the connection is gone
                writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"name"')
                break
            if body == b"garbage":
                writer.write(b"SMTP ready\r\n\r\n")
                continue
            if body == b"eof":  # no length: the body runs to the end of the connection
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
                break
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        await writer.drain()
        writer.close()

    async with raw_server(handle) as origin:
        http = Http1Origin(origin)
        head = http.request_head("/v1/projects/p/messages:send", {"Authorization": "Bearer x"})
        with pytest.raises(Http1Error):
            await http.post(head, b"cut")
        with pytest.raises(Http1Error):
            await http.post(head, b"garbage")
        assert (await http.post(head, b"eof")).body == b"all of it"
        assert (await http.post(head, b"fine")).body == b"ok"
        first = seen[0].split(b"\r\n")
        assert first[0] == b"POST /v1/projects/p/messages:send HTTP/1.1"
        assert b"Host: " + origin.removeprefix("http://").encode() in first
        assert b"Authorization: Bearer x" in first and b"Content-Length: 3" in first
        await http.aclose()


async def test_a_cancelled_request_closes_its_connection() -> None:
    release = asyncio.Event()
    closed: list[bool] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        if request.endswith(b"hang"):
            await release.wait()
            closed.append(await reader.read() == b"")  # the client hung up: EOF
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async with raw_server(handle) as origin:
        http = Http1Origin(origin)
        head = http.request_head("/", {})
        hung = asyncio.create_task(http.post(head, b"hang"))
        await asyncio.sleep(0.1)
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung
        release.set()
        assert (await http.post(head, b"next")).body == b"ok"  # on a new connection
        await asyncio.sleep(0.1)
        assert closed == [True]
        await http.aclose()


async def test_tls_checks_the_servers_certificate() -> None:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    async with aiohttp_server(echo_app(), server) as (origin, connections):
        http = Http1Origin(origin, trusting)
        head = http.request_head("/echo", {})
        assert (await http.post(head, b"1")).body == b"echo:1"
        assert (await http.post(head, b"2")).body == b"echo:2"
        assert len(connections) == 1
        await http.aclose()
        stranger = Http1Origin(origin)  # the system's CAs do not know this one
        with pytest.raises(Http1Error, match="TLS"):
            await stranger.post(head, b"3")


async def test_nobody_listening_is_a_connection_error() -> None:
    async with raw_server(lambda r, w: asyncio.sleep(0)) as origin:
        pass  # closed: the port is free again
    with pytest.raises(ConnectionRefusedError):
        await Http1Origin(origin).post(b"POST / HTTP/1.1\r\nContent-Length: ", b"")


def test_only_http_origins_are_taken() -> None:
    with pytest.raises(ValueError, match="origin"):
        Http1Origin("ftp://example.com")


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/projects/p x/messages:send", {}),
        ("/v1/projects/p\r\nX-Evil: 1/messages:send", {}),
        ("/ok", {"Authorization": "Bearer t\r\nX-Evil: 1"}),
        ("/ok", {"X-Evil: 1\r\nA": "b"}),
    ],
)
def test_a_line_break_from_outside_cannot_add_headers(path: str, headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Http1Origin("http://127.0.0.1:1").request_head(path, headers)
