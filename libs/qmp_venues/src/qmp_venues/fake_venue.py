"""What every fake venue shares: an aiohttp application served on a loopback port (free, or the one asked for).

The fakes (`fake_alpaca`, `fake_exchange`, and execution's `fake_broker` of QMP's own REST protocol) answer
with the shapes their vendors document, so the real client libraries can be pointed at them by URL in tests,
benchmarks and the demo.
"""

import socket

from aiohttp import web


class LoopbackServer:
    """Serve `app` on 127.0.0.1; `url` is its base address once started."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, app: web.Application) -> str:
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, backlog=1024).start()
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


Bar = tuple[int, float, float, float, float, float]  # open time (ms), open, high, low, close, volume


def append_bars(rows: list[Bar], start_ms: int, interval_ms: int, closes: list[float], volume: float) -> None:
    """Add a bar per close from `start_ms` on, each opening at the previous close (a fake's price history)."""
    previous = rows[-1][4] if rows else closes[0]
    for i, close in enumerate(closes):
        rows.append((start_ms + i * interval_ms, previous, max(previous, close), min(previous, close), close, volume))
        previous = close
