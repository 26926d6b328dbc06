"""`qmp audit security`: check a running stack and a deployment's files against docs/SECURITY.md.

Each check is named and ends in a finding or nothing. On a running stack, every service identity whose
password is known (the embedded stack's config, or `QMP_<ROLE>_PASSWORD`) tries what it must never do;
the probes name real streams and consumers but carry bodies the server would reject, so a permission
that wrongly holds is reported without changing anything. Files: what holds secrets is readable by its
owner only, and no log holds a password. A compose file and a production NATS config are checked when
given (or found at the repository's usual places).
"""

import asyncio
import contextlib
import json
import re
import stat
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import nats

from qmp_core import bus, subjects
from qmp_ops.runtime.nats_server import render_production_config
from qmp_ops.runtime.roles import ADMIN, ROLES
from qmp_ops.runtime.supervisor import Connection

REFUSAL_WAIT_S = 1.0
PROBE_TIMEOUT_S = 3.0
PROBE = "qmp-audit-probe"


@dataclass(frozen=True)
class Finding:
    check: str
    detail: str


@dataclass(frozen=True)
class Attempt:
    """Something no service may do, and the subject the server must refuse it on."""

    what: str
    subject: str
    body: bytes = b"{}"  # never a valid request: an attempt that is let through changes nothing


def attempts(service: str) -> list[Attempt]:
    """What `service` must be refused: the attacks of issue 13, sending control as someone else, and changing
    the pre-trade limits (an operator's alone)."""
    victim = subjects.CONSUMER_EXECUTION_BARS if service == "risk" else "risk-bars"  # another's consumer
    others = [source for source in ("operator", "risk", "deployer") if source != service]
    return [
        Attempt("create a stream", f"$JS.API.STREAM.CREATE.{PROBE.upper().replace('-', '_')}"),
        Attempt("change a stream (republish rules, limits)", f"$JS.API.STREAM.UPDATE.{subjects.STREAM_EXEC}"),
        Attempt("change the control bucket", f"$JS.API.STREAM.UPDATE.KV_{subjects.KV_CONTROL}"),
        *([Attempt("write the pre-trade limits", f"$KV.{subjects.KV_LIMITS}.{PROBE}")]
          if service != "deployer" else []),  # the deployer writes them, on an operator's request
        Attempt("ask for other pre-trade limits as the operator", subjects.limits(PROBE, "operator")),
        Attempt("delete a stream", f"$JS.API.STREAM.DELETE.{subjects.STREAM_AUDIT}"),
        Attempt("purge a stream", f"$JS.API.STREAM.PURGE.{subjects.STREAM_AUDIT}"),
        Attempt(f"delete another service's consumer ({victim})",
                f"$JS.API.CONSUMER.DELETE.{subjects.STREAM_MARKET_DATA}.{victim}"),
        Attempt("change consumers by name", f"$JS.API.CONSUMER.CREATE.{subjects.STREAM_MARKET_DATA}"),
        *[Attempt(f"send control as {other}", subjects.control(PROBE, other)) for other in others],
        Attempt(f"send a halt on the urgent lane as {others[0]}", subjects.control(PROBE, others[0], urgent=True)),
    ]


async def attempt_refused(errors: list[str], subject: str, attempt: Awaitable[object]) -> tuple[bool, object]:
    """Run `attempt` (a request on `subject`); return whether the server refused it, and the answer if any.

    `errors` is what the connection's error callback collects: a refusal is a permissions violation naming
    the subject, which comes back long before the request would time out, so the wait ends on it.
    """
    before = len(errors)
    expected = f'"{subject.lower()}"'  # nats-py lowercases the server's -ERR

    def violation() -> bool:
        return any("permissions violation" in error.lower() and expected in error.lower()
                   for error in errors[before:])

    request = asyncio.ensure_future(attempt)
    for _ in range(int(REFUSAL_WAIT_S / 0.02)):
        if violation() or request.done():
            break
        await asyncio.sleep(0.02)
    request.cancel()
    answer: object = None
    with contextlib.suppress(asyncio.CancelledError, TimeoutError, nats.errors.TimeoutError,
                             nats.errors.NoRespondersError):
        answer = await request
    await asyncio.sleep(0.05)  # a violation reported just after the answer
    return violation(), answer


async def refused(url: str, user: str, password: str, attempt: Attempt, tls_ca: str = "") -> bool:
    """Return whether the server refuses `attempt` to `user` (a permissions violation naming its subject)."""
    errors: list[str] = []

    async def on_error(error: Exception) -> None:
        errors.append(str(error))

    nc = await nats.connect(url, error_cb=on_error, max_reconnect_attempts=1,
                            **bus.connect_options(user, password, tls_ca))
    try:
        was_refused, _ = await attempt_refused(
            errors, attempt.subject, nc.request(attempt.subject, attempt.body, timeout=REFUSAL_WAIT_S))
        return was_refused
    finally:
        await nc.close()


def embedded_passwords(run_dir: Path) -> dict[str, str]:
    """Return user -> password from the embedded nats-server's config of a run (empty when there is none)."""
    config = run_dir / "nats" / "nats-server.conf"
    if not config.exists():
        return {}
    match = re.search(r"users: (\[.*\]) \}", config.read_text())
    return {entry["user"]: entry["password"] for entry in json.loads(match.group(1))} if match else {}


async def audit_permissions(connection: Connection, passwords: dict[str, str]) -> list[Finding]:
    findings = []
    for service in (role for role in ROLES if role != ADMIN):
        password = passwords.get(service)
        if not password:
            findings.append(Finding(f"permissions.{service}", "no password known: its permissions were not probed "
                                    f"(set QMP_{service.upper()}_PASSWORD)"))
            continue
        for attempt in attempts(service):
            if not await refused(connection.nats_url, service, password, attempt, connection.tls_ca):
                findings.append(Finding(f"permissions.{service}", f"may {attempt.what} ({attempt.subject})"))
    return findings


DEFAULT_PASSWORDS = ("", "password", "changeme", "secret", "admin", "qmp")


async def nats_login_accepted(connection: Connection, user: str, password: str) -> bool:
    """Return whether NATS lets `user` in with `password` (a refusal is an authorization error)."""
    try:
        nc = await asyncio.wait_for(nats.connect(
            connection.nats_url, max_reconnect_attempts=1, reconnect_time_wait=0.05, connect_timeout=PROBE_TIMEOUT_S,
            error_cb=_ignore, **bus.connect_options(user, password, connection.tls_ca)), PROBE_TIMEOUT_S * 2)
    except (OSError, TimeoutError, nats.errors.Error):
        return False
    await nc.close()
    return True


async def _ignore(error: Exception) -> None:
    """A refused login is the expected outcome of a probe; nats-py reports it here too."""


async def audit_default_passwords(connection: Connection) -> list[Finding]:
    """No identity of the stack logs in with an empty or well-known password, on NATS or PostgreSQL."""
    users = [*ROLES, *([connection.operator_user] if connection.operator_user not in ROLES else [])]
    guesses = [(user, password) for user in users for password in (*DEFAULT_PASSWORDS, user)]
    accepted = await asyncio.gather(*(nats_login_accepted(connection, user, password) for user, password in guesses))
    findings = [Finding("credentials.default", f"NATS user {user} logs in with the password {password!r}")
                for (user, password), ok in zip(guesses, accepted, strict=True) if ok]
    if connection.database_url:
        parts = urlsplit(connection.database_url)
        for password in (*DEFAULT_PASSWORDS, "postgres"):
            guess = urlunsplit(parts._replace(netloc=f"{parts.username}:{password}@{parts.hostname}:{parts.port}"))
            with contextlib.suppress(OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await (await asyncpg.connect(guess, timeout=PROBE_TIMEOUT_S)).close()
                findings.append(Finding("credentials.default", f"PostgreSQL user {parts.username} logs in with the "
                                        f"password {password!r}"))
    return findings


async def nats_requires_tls(url: str) -> bool:
    """Return whether the NATS server at `url` says, before anything else, that it accepts TLS clients only."""
    parts = urlsplit(url)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port or 4222),
                                            PROBE_TIMEOUT_S)
    try:
        line = await asyncio.wait_for(reader.readline(), PROBE_TIMEOUT_S)  # INFO {...}: the server speaks first
    finally:
        writer.close()
    return bool(json.loads(line.partition(b" ")[2] or b"{}").get("tls_required"))


async def postgres_accepts_plaintext(database_url: str) -> bool:
    """Return whether PostgreSQL lets a client log in without TLS (it must refuse before authentication)."""
    parts = urlsplit(database_url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if not key.startswith("ssl")]
    plaintext = urlunsplit(parts._replace(query=urlencode([*query, ("sslmode", "disable")])))
    try:
        connection = await asyncpg.connect(plaintext, timeout=PROBE_TIMEOUT_S)
    except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError):
        return False
    await connection.close()
    return True


async def audit_transport(connection: Connection) -> list[Finding]:
    """NATS and PostgreSQL: clients verify the server's certificate, and the servers refuse plaintext."""
    findings = []
    if not connection.tls_ca:
        findings.append(Finding("tls.nats", f"NATS at {connection.nats_url} is reached without TLS (no CA "
                                "to verify the server: QMP_NATS_TLS_CA)"))
    elif not await nats_requires_tls(connection.nats_url):
        findings.append(Finding("tls.nats", f"NATS at {connection.nats_url} also accepts plaintext clients"))
    if connection.database_url:
        mode = dict(parse_qsl(urlsplit(connection.database_url).query)).get("sslmode", "")
        if mode not in ("verify-ca", "verify-full"):
            findings.append(Finding("tls.postgres", "the database URL does not verify the server's certificate "
                                    f"(sslmode={mode or 'unset'}; verify-full wanted)"))
        elif await postgres_accepts_plaintext(connection.database_url):
            findings.append(Finding("tls.postgres", "PostgreSQL also accepts plaintext connections"))
    return findings


def audit_files(run_dir: Path, secrets: Iterable[str]) -> list[Finding]:
    """Files holding secrets readable by their owner only; no secret in any log of the run."""
    findings = []
    for path in [run_dir / "connection.json", run_dir / "nats" / "nats-server.conf",
                 run_dir / "postgres" / "postgres.password", run_dir / "tls" / "server.key"]:
        if path.exists() and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            findings.append(Finding("files.private", f"{path} is readable by others "
                                    f"(mode {stat.filemode(path.stat().st_mode)})"))
    secrets = [secret for secret in secrets if len(secret) >= 8]
    for log in sorted(run_dir.rglob("*.log")):
        text = log.read_text(errors="replace")
        if any(secret in text for secret in secrets):
            findings.append(Finding("logs.secrets", f"{log} holds a password"))
    return findings


def audit_compose(path: Path) -> list[Finding]:
    text = path.read_text()
    findings = []
    for name, rest in re.findall(r"\$\{([A-Z_]*(?:PASSWORD|SECRET|KEY))([^}]*)\}", text):
        if not rest.startswith(":?"):
            findings.append(Finding("compose.secrets", f"{name} may be empty: use ${{{name}:?...}}"))
    for port in re.findall(r'"([^"\s]*:\d+:\d+|\d+:\d+)"', text):
        if not (port.startswith("127.0.0.1:") or port.startswith("${QMP_BIND:-127.0.0.1}:")):
            findings.append(Finding("compose.ports", f"port {port} is published on every interface"))
    if re.search(r'["\s:]8222["\s:]', text):
        findings.append(Finding("compose.monitoring", "the NATS monitoring port (8222, no authentication) is "
                                "published"))
    for url in re.findall(r"QMP_NATS_URL:\s*(\S+)", text):
        if not url.startswith("tls://"):
            findings.append(Finding("compose.tls", f"services reach NATS at {url} without TLS"))
    if "QMP_NATS_URL" in text and "QMP_NATS_TLS_CA" not in text:
        findings.append(Finding("compose.tls", "no QMP_NATS_TLS_CA: services cannot verify the NATS server"))
    for url in re.findall(r"QMP_DATABASE_URL:\s*([^\n]+)", text):
        if "sslmode=verify-full" not in url:
            findings.append(Finding("compose.tls", "the services' database URL does not verify PostgreSQL's "
                                    "certificate (sslmode=verify-full)"))
    dockerfile = path.parent / "Dockerfile"
    if "build:" in text and dockerfile.exists():
        users = re.findall(r"^USER\s+(\S+)", dockerfile.read_text(), flags=re.MULTILINE)
        if not users or users[-1] in ("root", "0"):
            findings.append(Finding("image.root", f"{dockerfile} runs the services as root"))
    return findings


def audit_nats_config(path: Path) -> list[Finding]:
    text = path.read_text()
    findings = []
    if text != render_production_config():
        findings.append(Finding("nats.config", f"{path} is not the role table's: "
                                "`qmp nats-config --write` it"))
    if re.search(r'password:\s*"?[^$\s"][^\s",}]*', text):
        findings.append(Finding("nats.config", f"{path} holds a literal password"))
    return findings


async def audit(connection: Connection | None, compose: Path | None, nats_config: Path | None,
                service_passwords: dict[str, str]) -> tuple[list[str], list[Finding]]:
    """Return (what was checked, findings)."""
    checked: list[str] = []
    findings: list[Finding] = []
    for role, password in service_passwords.items():
        # nats-server reads $QMP_<ROLE>_PASSWORD as a config value: 12345, true, 1MB or -x do not load
        if not re.match(r"[A-Za-z]", password):
            findings.append(Finding("credentials.format", f"QMP_{role.upper()}_PASSWORD must start with a letter "
                                    "(nats-server reads a value that looks like a number, a size, a boolean or "
                                    "starts with '-' as that, and refuses the config)"))
    if connection is not None:
        run_dir = Path(connection.run_dir)
        passwords = {**embedded_passwords(run_dir), **service_passwords}
        checked += ["permissions of every service (probes)", "transport (TLS)", "default passwords",
                    f"files of {run_dir}"]
        findings += await audit_permissions(connection, passwords)
        findings += await audit_transport(connection)
        findings += await audit_default_passwords(connection)
        findings += audit_files(run_dir, [*passwords.values(), connection.operator_password])
    if compose is not None:
        checked.append(str(compose))
        findings += audit_compose(compose)
    if nats_config is not None:
        checked.append(str(nats_config))
        findings += audit_nats_config(nats_config)
    return checked, findings
