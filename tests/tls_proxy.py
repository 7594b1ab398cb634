"""A TLS front for the Temporal dev server, which serves only plaintext: it terminates TLS
(h2, as gRPC needs), requires a client certificate signed by the given client CA (mTLS, as a
self-hosted cluster or a load balancer in front of one does), and pipes the bytes to the dev
server. It runs its own event loop in a thread, so the processes under test can reach it while
the test blocks. It records the client certificate of every connection it let through (a handshake
without a valid one fails before that)."""

import asyncio
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import trustme


class TlsFront:
    def __init__(self, upstream: str, server_ca: trustme.CA, client_ca: trustme.CA, name: str):
        self.upstream_host, port = upstream.rsplit(":", 1)
        self.upstream_port = int(port)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ca.issue_cert(name).configure_cert(self.context)
        client_ca.configure_trust(self.context)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.set_alpn_protocols(["h2"])
        self.clients: list[str] = []  # the verified client certificates' common names
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(
                self._handle, "127.0.0.1", 0, ssl=self.context, ssl_handshake_timeout=10
            )
        )
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert") or {}
        subject = dict(item[0] for item in peer.get("subject", ()))
        self.clients.append(str(subject.get("commonName", "")))
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with suppress(ConnectionError, ssl.SSLError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with suppress(Exception):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    @contextmanager
    def running(self) -> Iterator["TlsFront"]:
        self._thread.start()
        self._started.wait(10)
        try:
            yield self
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
