"""A flaky object store for tests: an HTTP proxy in front of an S3 endpoint that injects, at seeded
rates, what a real cloud's store does now and then (issue 27):

- ``throttle``: answers ``503 SlowDown`` without forwarding the request;
- ``reset_before``: closes the connection without forwarding (the store never saw it);
- ``reset_after``: forwards the request, lets the store apply it, then closes the connection
  without the answer (the client never hears that its write happened, and retries it);
- ``delay``: holds the request ``delay_s`` seconds before forwarding it;
- and, until ``throttle_until``, throttles every request (a store that sheds load for a while).

Each request (one HTTP exchange) draws one of these, or none, from a generator seeded by the
proxy's seed and the request's number. The Host header is forwarded unchanged, so SigV4
signatures made for the proxy's address stay valid at the store. Upstream connections are one per
request (``Connection: close``), so a response is whatever the store sends until it closes.
"""
from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

SLOW_DOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")
FAULTS = ("throttle", "reset_before", "reset_after", "delay")


@dataclass
class Rates:
    throttle: float = 0.0
    reset_before: float = 0.0
    reset_after: float = 0.0
    delay: float = 0.0
    delay_s: float = 2.0

    def draw(self, rng: random.Random) -> str | None:
        u = rng.random()
        for name in FAULTS:
            p = getattr(self, name)
            if u < p:
                return name
            u -= p
        return None


@dataclass
class FlakyStore:
    """``FlakyStore(upstream_url, rates, seed).start()`` -> ``.endpoint_url`` answers like the store,
    with faults; ``.counts``: requests and each fault injected; ``.stop()``."""
    upstream_url: str
    rates: Rates
    seed: int = 0
    counts: Counter = field(default_factory=Counter)
    endpoint_url: str = ""
    throttle_until: float = 0.0   # time.monotonic() before which every request is throttled (an outage)

    def start(self) -> "FlakyStore":
        host, port = self.upstream_url.split("://", 1)[1].rstrip("/").rsplit(":", 1)
        self._upstream = (host, int(port))
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve():
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
            self.endpoint_url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True, name="flaky-store")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the flaky store proxy did not start")
        return self

    def stop(self) -> None:
        async def close():
            self._server.close()
            await self._server.wait_closed()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> "FlakyStore":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- one client connection: requests one after another (keep-alive)
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader, writer)
                if request is None:
                    return
                number = self.counts["requests"]
                self.counts["requests"] += 1
                fault = self.rates.draw(random.Random(f"{self.seed}-{number}"))
                if time.monotonic() < self.throttle_until:
                    fault = "throttle"
                if fault:
                    self.counts[fault] += 1
                if fault == "throttle":
                    writer.write(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                                 b"Content-Length: %d\r\n\r\n" % len(SLOW_DOWN) + SLOW_DOWN)
                    await writer.drain()
                    continue
                if fault == "reset_before":
                    return
                if fault == "delay":
                    await asyncio.sleep(self.rates.delay_s)
                response = await self._forward(request)
                if fault == "reset_after":
                    return
                writer.write(response)
                await writer.drain()
                if b"\r\nconnection: close" in response.split(b"\r\n\r\n", 1)[0].lower():
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _forward(self, request: bytes) -> bytes:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        try:
            up_writer.write(request)
            await up_writer.drain()
            return await up_reader.read()      # Connection: close: the whole response, then EOF
        finally:
            up_writer.close()


async def _read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
    """The next request of a client connection, rewritten for one upstream exchange (Connection:
    close, no Expect); None when the client closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head[:-4].split(b"\r\n")
    headers = [line for line in lines[1:] if line]
    names = {line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip() for line in headers}
    if names.get(b"transfer-encoding", b"").lower() == b"chunked":
        raise ConnectionError("the flaky store proxy does not take chunked request bodies")
    if names.get(b"expect", b"").lower() == b"100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    body = await reader.readexactly(int(names.get(b"content-length", b"0")))
    keep = [h for h in headers if h.split(b":", 1)[0].strip().lower() not in (b"connection", b"expect")]
    return b"\r\n".join([lines[0], *keep, b"Connection: close"]) + b"\r\n\r\n" + body
