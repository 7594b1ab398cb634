"""One TLS connection to APNs carrying many requests at once as HTTP/2 streams (h2), and
telling a request APNs never processed (safe to resend) from one it may have taken."""

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from hpack import Encoder, NeverIndexedHeaderTuple

# A plain pair is kept in the HPACK table; a NeverIndexedHeaderTuple (see `unindexed`) is not.
RequestHeader = tuple[str, str] | NeverIndexedHeaderTuple
Response = tuple[int, dict[str, str], bytes]  # status, headers, body


class ApnsUnprocessed(Exception):
    """APNs did not process the request (no connection, refused stream, GOAWAY): resend it."""


class ApnsLost(Exception):
    """The connection ended after the request went out: APNs may or may not have taken it."""


@dataclass
class _Stream:
    response: asyncio.Future[Response]
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    sent: bool = False


class Http2Connection(asyncio.Protocol):
    """One TLS connection to APNs carrying many requests at once as HTTP/2 streams (h2)."""

    def __init__(self, authority: str) -> None:
        # The provider builds well-formed lowercase headers itself, and the stable ones (the JWT
        # included: long, high-entropy, sent to Apple only) stay in the HPACK table; checking
        # and re-encoding them on every request was most of the client's CPU.
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding="utf-8",
            normalize_outbound_headers=False,
            validate_outbound_headers=False,
        )
        self._h2 = h2.connection.H2Connection(config)
        self._h2.encoder = _PlainEncoder()
        self._authority = authority
        self._streams: dict[int, _Stream] = {}
        self._progress = asyncio.Event()
        self._transport: asyncio.Transport | None = None
        self._closed = False
        self._flush_pending = False
        self.settled = asyncio.get_running_loop().create_future()  # set by the server's SETTINGS
        self.usable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._h2.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed, self.usable = True, False
        for stream in self._streams.values():
            lost = ApnsLost("the connection to APNs closed before it answered")
            _fail(stream, lost if stream.sent else ApnsUnprocessed("the connection closed"))
        self._streams.clear()
        if not self.settled.done():
            self.settled.set_result(None)
        self._wake()

    def close(self) -> None:
        if not self._closed and self._transport is not None:
            with contextlib.suppress(h2.exceptions.ProtocolError):  # already saw a GOAWAY
                self._h2.close_connection()
            self._flush()
            self._transport.close()

    def close_when_idle(self) -> None:
        """Retired: close now if no request is waiting, else once the last one is answered."""
        self.usable = False
        if not self._streams:
            self.close()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError:  # h2 queued a GOAWAY saying why
            self.usable = False
            self._flush()
            if self._transport is not None:
                self._transport.close()  # connection_lost fails the open streams
            return
        for event in events:
            self._handle(event)
        self._flush()
        if not self.usable and not self._streams and self._transport is not None:
            self._transport.close()
        self._wake()

    def _handle(self, event: h2.events.Event) -> None:
        stream = self._streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.RemoteSettingsChanged) and not self.settled.done():
            self.settled.set_result(None)
        elif isinstance(event, h2.events.ResponseReceived) and stream:
            # h2 hands back str headers, as header_encoding asks; its types only know bytes.
            stream.headers = dict(cast(list[tuple[str, str]], event.headers))
        elif isinstance(event, h2.events.DataReceived):
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if stream:
                stream.body.extend(event.data)
        elif isinstance(event, h2.events.StreamEnded) and stream:
            del self._streams[event.stream_id]
            status = int(stream.headers.get(":status", 0))
            stream.response.set_result((status, stream.headers, bytes(stream.body)))
        elif isinstance(event, h2.events.StreamReset) and stream:
            del self._streams[event.stream_id]
            refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
            if refused or not stream.sent:
                _fail(stream, ApnsUnprocessed("APNs refused the stream"))
            else:
                _fail(stream, ApnsLost(f"APNs reset the stream ({event.error_code!r})"))
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.usable = False  # GOAWAY: streams above last_stream_id were never processed
            last = event.last_stream_id or 0
            for stream_id in [s for s in self._streams if s > last]:
                _fail(self._streams.pop(stream_id), ApnsUnprocessed("APNs is closing (GOAWAY)"))

    async def request(self, path: str, headers: list[RequestHeader], body: bytes) -> Response:
        h2c = self._h2
        await self._until(lambda: len(self._streams) < h2c.remote_settings.max_concurrent_streams)
        if not self.usable:
            raise ApnsUnprocessed("the connection to APNs is closing")
        try:
            stream_id = h2c.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            self.usable = False
            raise ApnsUnprocessed("stream ids used up; reconnecting") from None
        pseudo = [(":method", "POST"), (":scheme", "https"), (":authority", self._authority)]
        try:
            h2c.send_headers(stream_id, [*pseudo, unindexed(":path", path), *headers])
        except h2.exceptions.ProtocolError as exc:  # our view of the connection is off: start anew
            self.usable = False
            raise ApnsUnprocessed(f"HTTP/2 state error: {exc!r}") from None
        stream = _Stream(asyncio.get_running_loop().create_future())
        self._streams[stream_id] = stream
        try:
            if h2c.local_flow_control_window(stream_id) < len(body):
                self._flush()
                await self._until(
                    lambda: (
                        stream.response.done()
                        or h2c.local_flow_control_window(stream_id) >= len(body)
                    )
                )
            if not stream.response.done():
                h2c.send_data(stream_id, body, end_stream=True)
                stream.sent = True
                self._flush_soon()
            return await stream.response
        except asyncio.CancelledError:  # timed out: tell APNs we stopped waiting
            if self._streams.pop(stream_id, None) is not None and not self._closed:
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    h2c.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                self._flush()
                self._wake()  # a stream slot came free
            raise

    async def _until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            if self._closed:
                raise ApnsUnprocessed("the connection to APNs closed")
            await self._progress.wait()

    def _wake(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    def _flush_soon(self) -> None:
        """Flush once this loop iteration is over, so concurrent requests share one TLS write."""
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


class _PlainEncoder(Encoder):
    """HPACK without Huffman coding: pure-Python Huffman costs both ends more CPU than the ~30
    bytes it saves on a request's unique values (the rest come from the HPACK table).

    A header already in the table encodes to the same bytes until the table changes, so those
    encodings are remembered: the stable headers (JWT, topic, ...) of each request then cost a
    dict lookup instead of a table search and an integer encoding."""

    def __init__(self) -> None:
        super().__init__()
        self._known: dict[tuple[bytes, bytes], bytes] = {}

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        table = self.header_table
        if table.resized:  # the block must start with the size update; the indices shifted
            self._known.clear()
            return super().encode(headers, huffman=False)
        known, entries = self._known, table.dynamic_entries
        block = []
        for header in headers:
            pair = (_to_bytes(header[0]), _to_bytes(header[1]))
            encoded = known.get(pair)
            if encoded is None:
                indexable = getattr(header, "indexable", len(header) < 3 or not header[2])
                before = (len(entries), entries[0] if entries else None)
                encoded = self.add(pair, not indexable, huffman=False)
                if before == (len(entries), entries[0] if entries else None):
                    if indexable and encoded[0] & 0x80:  # an index into an unchanged table
                        known[pair] = encoded
                else:  # an entry was added (and maybe others evicted): indices moved
                    known.clear()
            block.append(encoded)
        return b"".join(block)


def _to_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def unindexed(name: str, value: str) -> NeverIndexedHeaderTuple:
    """A per-request header: kept out of the HPACK table so it does not evict the stable ones."""
    return NeverIndexedHeaderTuple(name, value)


def _fail(stream: _Stream, exc: Exception) -> None:
    if not stream.response.done():
        stream.response.set_exception(exc)
