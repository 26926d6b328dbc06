"""`qmp certificates`: a CA and a server certificate for a compose stack, checked by real TLS handshakes."""

import asyncio
import ssl
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qmp_core.bus import client_tls
from qmp_ops.cli.main import app

pytestmark = pytest.mark.security


async def handshake(out: Path, server_name: str) -> None:
    """Serve TLS with the made certificate on loopback and connect as a client that trusts only ca.pem."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(out / "server.pem", out / "server.key")

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls(str(out / "ca.pem")),
                                                        server_hostname=server_name)
        writer.close()
    finally:
        server.close()


def test_certificates_when_made_then_valid_for_the_named_hosts_only_and_the_key_is_private(tmp_path: Path) -> None:
    out = tmp_path / "certs"

    result = CliRunner().invoke(app, ["certificates", "--out", str(out), "--host", "nats", "--host", "timescaledb"])

    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((out / "server.key").stat().st_mode) == 0o600
    asyncio.run(handshake(out, "nats"))
    asyncio.run(handshake(out, "timescaledb"))
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(handshake(out, "nats.attacker.example"))


def test_certificates_when_the_directory_holds_a_set_then_refused_and_nothing_replaced(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    CliRunner().invoke(app, ["certificates", "--out", str(out), "--host", "nats"])
    before = (out / "ca.pem").read_bytes()

    result = CliRunner().invoke(app, ["certificates", "--out", str(out), "--host", "nats"], env={"COLUMNS": "200"})

    assert result.exit_code != 0 and "already holds" in result.output
    assert (out / "ca.pem").read_bytes() == before
