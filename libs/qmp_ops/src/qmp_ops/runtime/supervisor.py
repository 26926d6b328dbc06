"""The process supervisor behind `qmp up` and `qmp demo`.

Starts NATS and PostgreSQL (embedded unless `QMP_NATS_URL` / `QMP_DATABASE_URL` name running servers),
migrates the database, declares streams and KV, then the four services as child processes, each
health-checked over the bus; stops them in reverse order. Writes the connection file other clients read.
"""

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
import nats

from qmp_core import bus, subjects, warm_spare
from qmp_core.config import Retention, StreamStorage, load_settings
from qmp_core.db import migrate
from qmp_ops.environment import set_environment
from qmp_ops.runtime.certificates import ServerCertificates
from qmp_ops.runtime.nats_server import EmbeddedNats, EmbeddedNatsCluster, NatsCredentials
from qmp_ops.runtime.ports import free_port, write_private
from qmp_ops.runtime.postgres_server import EmbeddedPostgres
from qmp_ops.runtime.roles import ADMIN

log = logging.getLogger(__name__)

SERVICES = ("deployer", "risk", "execution", "collector")  # start order; stop in reverse
# The settings `Stack.service_environment` writes for every service, over whatever the operator gave.
STACK_OWNED = frozenset({"nats_url", "nats_user", "nats_password", "nats_tls_ca", "database_url", "run_dir",
                         "clock", "metrics_port"})
CONNECTION_FILE = Path(".qmp") / "connection.json"
STOP_TIMEOUT_S = 15.0
CONNECT_TIMEOUT_S = 3.0


class StackUnavailable(ConnectionError):
    """The stack a command needs cannot be reached; the message says what is wrong and what to do."""
HEALTH_TIMEOUT_S = 60.0


@dataclass
class StackOptions:
    """What differs between `qmp up`, `qmp demo` and the system tests: per-service environment."""

    home: Path = Path(".qmp")
    clock: str = "replay"
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)
    services: tuple[str, ...] = SERVICES
    fresh: bool = False  # purge streams, consumers and control state on running servers
    share_connection: bool = True  # write <home>/connection.json for other clients (`qmp up`)
    operators: tuple[str, ...] = ()  # named operators: a user each, and <home>/operators/<name>.json
    # `qmp up` hands the operator's QMP_* settings (QMP_CAPITAL, breaker thresholds, ...) to the services; a
    # replay of record (the demo, verification) does not, so its numbers never depend on the shell it ran in.
    pass_environment: bool = False
    tls: bool = True  # embedded servers speak TLS only; off (`qmp up --no-tls`) for debugging alone
    # A warm spare per service (qmp_core.warm_spare): a crash is followed by a start that imports nothing.
    # Each spare holds a service's imports in memory (~100-200 MB); `qmp up --no-warm-spares` goes without.
    warm_spares: bool = False
    # Each service serves Prometheus metrics on a loopback port of its own (`qmp up`); the ports are
    # written to <run_dir>/prometheus-targets.json, a file_sd target list a Prometheus server can read.
    metrics: bool = False
    # Three nats-servers clustered on loopback (`qmp up --cluster`), every stream and bucket with three
    # replicas: the production cluster's topology as processes, where a server's loss loses nothing.
    cluster: bool = False


def redacted(url: str) -> str:
    """Return the URL with its password masked, for printing."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def operator_connection_file(home: Path, name: str) -> Path:
    """Where `qmp up --operators` writes a named operator's connection details (`qmp --as <name>` reads it)."""
    return home / "operators" / f"{name}.json"


@dataclass
class Connection:
    """How the operator's commands reach a stack: NATS (with the operator's credentials) and PostgreSQL."""

    nats_url: str
    database_url: str
    run_dir: str
    operator_user: str = ""
    operator_password: str = ""
    embedded: bool = True
    tls_ca: str = ""  # a CA file: the NATS connection uses TLS and checks the server against it

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, json.dumps(self.__dict__, indent=2))

    @classmethod
    def read(cls, path: Path = CONNECTION_FILE) -> "Connection":
        """Return the stack to talk to: the one QMP_NATS_URL names when set, else the one `qmp up` wrote down.

        With QMP_NATS_URL, the credentials are QMP_NATS_USER / QMP_NATS_PASSWORD (else those of the
        connection file, when it names the same server), the database QMP_DATABASE_URL, and QMP_NATS_TLS_CA
        turns TLS on. `qmp --nats-url ...` sets the same variables for one command.
        """
        saved = cls(**json.loads(path.read_text())) if path.exists() else None
        url = os.environ.get("QMP_NATS_URL", "")
        if url:
            # the file's details fill in what the environment leaves out, when it names the same server
            same = saved if saved is not None and saved.nats_url == url else cls(url, "", "")
            env = os.environ.get
            return cls(nats_url=url, database_url=env("QMP_DATABASE_URL") or same.database_url,
                       run_dir=same.run_dir, embedded=False,
                       operator_user=env("QMP_NATS_USER") or same.operator_user,
                       operator_password=env("QMP_NATS_PASSWORD") or same.operator_password,
                       tls_ca=env("QMP_NATS_TLS_CA") or same.tls_ca)
        if saved is None:
            raise StackUnavailable(f"no stack is running here ({path} not found): start one with `qmp up`, or "
                                   "name a running one with --nats-url / QMP_NATS_URL")
        return saved

    @property
    def sender(self) -> str:
        """Who this connection sends control commands as: its NATS user (the admin when auth is off)."""
        return self.operator_user or ADMIN

    async def connect(self, follow: bool = False) -> nats.NATS:
        """Connect as the operator; a stack that is down is a clear error in about a second, not minutes.

        `follow` keeps reconnecting for as long as the connection lives (an observer that must ride out a
        server restart); a one-shot command gives up after one more try.
        """
        auth = bus.connect_options(self.operator_user, self.operator_password, self.tls_ca)
        try:
            if follow:
                return await nats.connect(bus.server_urls(self.nats_url), name="qmp-observer",
                                          max_reconnect_attempts=-1, reconnect_time_wait=0.5, error_cb=_quiet, **auth)
            # max_reconnect_attempts=0 or allow_reconnect=False make nats-py wait forever on a dead server
            # (nats-py 2.16); one attempt after a short wait fails with NoServersError in about a second.
            return await nats.connect(bus.server_urls(self.nats_url), name="qmp-cli",
                                      connect_timeout=CONNECT_TIMEOUT_S, max_reconnect_attempts=1,
                                      reconnect_time_wait=0.5, error_cb=_quiet, **auth)
        except (OSError, TimeoutError, nats.errors.Error) as error:
            raise StackUnavailable(f"cannot reach NATS at {self.nats_url} ({error or type(error).__name__}): "
                                   "is the stack up? `qmp status` tells, `qmp up` starts one") from error


async def _quiet(error: Exception) -> None:
    """nats-py logs every connection error itself; the caller reports the one that matters."""



def current_run_dir(home: Path) -> Path | None:
    """The running stack's run directory, else the latest one under `<home>/runs` (None if there is none)."""
    try:
        current = Connection.read().run_dir
    except StackUnavailable:
        current = ""
    if current:
        return Path(current)
    runs = sorted((home / "runs").glob("*"))
    return runs[-1] if runs else None


class Stack:
    """Servers and services of one run."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.run_dir = (options.home / "runs" / f"{stamp}-{os.getpid()}").resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        self.nats: EmbeddedNats | EmbeddedNatsCluster | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.credentials: NatsCredentials | None = None
        self.database_url = ""
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.spares: dict[str, subprocess.Popen[bytes]] = {}  # warm spares, by service
        self.metrics_ports = {service: free_port() for service in options.services} if options.metrics else {}
        if self.metrics_ports:
            targets = [{"targets": [f"127.0.0.1:{port}"], "labels": {"job": "qmp", "service": service}}
                       for service, port in self.metrics_ports.items()]
            (self.run_dir / "prometheus-targets.json").write_text(json.dumps(targets, indent=2))

    @property
    def connection(self) -> Connection:
        assert self.credentials is not None
        user, password = self.credentials.for_user("operator")
        return Connection(self.credentials.url, self.database_url, str(self.run_dir), user, password,
                          embedded=self.nats is not None, tls_ca=self.credentials.tls_ca)

    def start_servers(self) -> Connection:
        """Start (or attach to) NATS and PostgreSQL, migrate, declare; stop what started if any step fails."""
        try:
            return self._start_servers()
        except BaseException:
            self.stop()
            raise

    def _start_servers(self) -> Connection:
        # One CA per run for both servers, so a client trusts one file.
        certificates = ServerCertificates.issue(self.run_dir / "tls") if self.options.tls else None
        external_nats = os.environ.get("QMP_NATS_URL")
        if external_nats:
            self.credentials = NatsCredentials(url=external_nats, tls_ca=os.environ.get("QMP_NATS_TLS_CA", ""))
        elif self.options.cluster:
            self.nats = EmbeddedNatsCluster(self.run_dir, operators=self.options.operators, tls=self.options.tls,
                                            certificates=certificates)
            self.credentials = self.nats.start()
        else:
            self.nats = EmbeddedNats(self.run_dir / "nats", operators=self.options.operators, tls=self.options.tls,
                                     certificates=certificates)
            self.credentials = self.nats.start()
        external_db = os.environ.get("QMP_DATABASE_URL")
        if external_db:
            self.database_url = external_db
        else:
            self.postgres = EmbeddedPostgres(self.run_dir / "postgres", tls=self.options.tls,
                                             certificates=certificates)
            self.database_url = self.postgres.start()
        asyncio.run(self._prepare())
        connection = self.connection
        if self.options.share_connection:
            connection.write(self.shared_connection_file)
        connection.write(self.run_dir / "connection.json")
        if self.options.share_connection and self.credentials.users:
            for name in self.options.operators:  # each person's own connection file, readable by the owner only
                dataclasses.replace(connection, operator_user=name, operator_password=self.credentials.users[name]
                                    ).write(operator_connection_file(self.options.home, name))
        return connection

    @property
    def shared_connection_file(self) -> Path:
        return self.options.home / "connection.json"

    async def _prepare(self) -> None:
        await migrate(self.database_url)
        connection = await asyncpg.connect(self.database_url)
        try:  # a stack `qmp up` runs is a test one; it refuses a production database (WrongEnvironment)
            await set_environment(connection, "test")
        finally:
            await connection.close()
        nc = await self.connection.connect()
        try:
            js = nc.jetstream()
            if self.options.fresh and self.nats is None:
                await reset_bus(js)
            storage = load_settings(StreamStorage)
            if self.options.cluster:  # a copy on each server: one may go without a stream going
                assert isinstance(self.nats, EmbeddedNatsCluster)
                storage = msgspec.structs.replace(storage, stream_replicas=len(self.nats.nodes))
            await bus.declare(js, load_settings(Retention), storage)
        finally:
            await nc.close()

    def service_environment(self, service: str) -> dict[str, str]:
        """The environment a service starts with: the operator's settings (when passed on), under the stack's
        own connection, identity, run directory, clock and metrics port (`STACK_OWNED`), which always win."""
        assert self.credentials is not None
        user, password = self.credentials.for_user(service)
        env = {key: value for key, value in os.environ.items()
               if self.options.pass_environment or not key.startswith("QMP_")}
        env.update(
            QMP_NATS_URL=self.credentials.url, QMP_NATS_USER=user, QMP_NATS_PASSWORD=password,
            QMP_NATS_TLS_CA=self.credentials.tls_ca, QMP_DATABASE_URL=self.database_url,
            QMP_RUN_DIR=str(self.run_dir), QMP_CLOCK=self.options.clock,
            PYTHONUNBUFFERED="1",
        )
        if service in self.metrics_ports:  # the same port across restarts: the scrape target stays valid
            env["QMP_METRICS_PORT"] = str(self.metrics_ports[service])
        env.update(self.options.service_env.get(service, {}))
        return env

    def start_service(self, service: str) -> None:
        """Start the service: its warm spare when one is alive, else a new process."""
        spare = self.spares.pop(service, None)
        if spare is not None and spare.poll() is None and spare.stdin is not None:
            try:
                spare.stdin.write(warm_spare.GO)
                spare.stdin.close()
                self.processes[service] = spare
                return
            except OSError:  # it died between the look and the word: start afresh
                self._end_spare(spare)
        self.processes[service] = self._spawn(service, [f"qmp_{service}"])

    def prepare_spare(self, service: str) -> bool:
        """Start a warm spare for the service unless one is alive; return whether one was started."""
        spare = self.spares.get(service)
        if spare is not None and spare.poll() is None:
            return False
        self.spares[service] = self._spawn(service, ["qmp_core.warm_spare", f"qmp_{service}"], spare=True)
        return True

    @staticmethod
    def _end_spare(spare: subprocess.Popen[bytes]) -> None:
        """End a spare that was never woken. It holds no connection and no file but its log: a kill is clean."""
        if spare.stdin is not None:
            with contextlib.suppress(OSError):
                spare.stdin.close()
        spare.kill()
        spare.wait()

    def _spawn(self, service: str, module: list[str], spare: bool = False) -> subprocess.Popen[bytes]:
        with (self.run_dir / "logs" / f"{service}.log").open("ab") as log_file:
            return subprocess.Popen(
                [sys.executable, "-m", *module], env=self.service_environment(service),
                stdin=subprocess.PIPE if spare else None, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def start_services(self) -> None:
        """Start the services in order, each once the previous one answers its health request."""
        for service in self.options.services:
            self.start_service(service)
            await self.wait_healthy(service)
            self.prepare_spare_if_wanted(service)

    def prepare_spare_if_wanted(self, service: str) -> None:
        """With `warm_spares`, start the service's spare (its imports overlap the next service's start)."""
        if self.options.warm_spares:
            self.prepare_spare(service)

    async def wait_healthy(self, service: str, timeout_s: float = HEALTH_TIMEOUT_S) -> dict:
        """Wait until the service answers its health request; raise with its log tail if it dies."""
        nc = await self.connection.connect()
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                process = self.processes.get(service)
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"{service} exited with {process.returncode}:\n{self.log_tail(service)}")
                try:
                    reply = await nc.request(subjects.health(service), b"", timeout=0.5)
                    return json.loads(reply.data)
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    await asyncio.sleep(0.2)
        finally:
            await nc.close()
        raise TimeoutError(f"{service} not healthy after {timeout_s}s:\n{self.log_tail(service)}")

    def log_tail(self, service: str, chars: int = 3000) -> str:
        path = self.run_dir / "logs" / f"{service}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop_service(self, service: str, sig: int = signal.SIGTERM) -> None:
        process = self.processes.pop(service, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self) -> None:
        """Stop the services, then PostgreSQL and NATS; an interrupt meanwhile waits until all are stopped.

        A terminal's Ctrl-C reaches `qmp up` twice when it runs under a launcher that passes signals on
        (`./dev up`: uv forwards the one its process group got as well). Cut short by the second, the stop
        would leave services and servers running with nobody left to stop them.
        """
        with interrupts_held():
            for spare in self.spares.values():
                self._end_spare(spare)
            self.spares.clear()
            for service in reversed(self.options.services):
                self.stop_service(service)
            self._withdraw_connection()
            if self.postgres is not None:
                self.postgres.stop()
            if self.nats is not None:
                self.nats.stop()

    def _withdraw_connection(self) -> None:
        """Remove the shared connection file if it still points at this run, so clients fail fast."""
        path = self.shared_connection_file
        try:
            if json.loads(path.read_text()).get("run_dir") == str(self.run_dir):
                path.unlink()
        except (FileNotFoundError, ValueError):
            pass

    def dead_services(self) -> list[str]:
        return [name for name, process in self.processes.items() if process.poll() is not None]


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the block (main thread only): one that comes is raised as
    KeyboardInterrupt once the block is done, so what it does is done whole."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, _frame: held.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if held:
        raise KeyboardInterrupt


async def reset_bus(js: nats.js.JetStreamContext) -> None:
    """Delete QMP streams and buckets (control, rollouts, limits) on a running server, for a fresh demo run."""
    for config in bus.STREAMS:
        try:
            await js.delete_stream(config.name)
        except nats.js.errors.NotFoundError:
            pass
    for bucket in (subjects.KV_CONTROL, subjects.KV_ROLLOUTS, subjects.KV_LIMITS):
        try:
            await js.delete_key_value(bucket)
        except nats.js.errors.NotFoundError:
            pass


RESTART_FIRST_DELAY_S = 0.5
RESTART_MAX_DELAY_S = 30.0
STABLE_AFTER_S = 60.0  # a service that ran this long before it died is restarted at once again
HEALTH_EVERY_S = 2.0
EXIT_CHECK_S = 0.1
FAILING_FOR_S = 6.0  # a service whose health says "failing" this long is restarted
SILENT_FOR_S = 45.0  # a live process that has not answered its health request this long is restarted
SUPERVISOR_FILE = "supervisor.json"


@dataclass
class ServiceRecord:
    """What the supervisor knows of one service: its restarts and why, and its latest health."""

    restarts: int = 0
    quick_failures: int = 0  # deaths in a row, each soon after a start: they lengthen the backoff
    started_at: float = field(default_factory=time.monotonic)
    restart_at: float | None = None  # when the pending restart happens (None: running)
    last_exit: str = ""
    stop_reason: str = ""  # set when the supervisor itself stops the service, to be restarted
    health: str = "starting"
    failing_since: float | None = None
    answered_at: float = field(default_factory=time.monotonic)

    def public(self) -> dict[str, Any]:
        return {"restarts": self.restarts, "last_exit": self.last_exit, "health": self.health,
                "restarting": self.restart_at is not None}


class Supervisor:
    """Keep a stack's services running: restart one that exits, fails its health or stops answering.

    A service that dies is restarted at once; if it dies again soon after that start, restarts back off
    (0.5 s doubling to 30 s), so a crash loop neither spins nor gives up. With `StackOptions.warm_spares` a
    restart wakes the service's spare, already imported, and a new spare is prepared in a later health round
    (one a round). The record of restarts is written to `<run_dir>/supervisor.json`, which `qmp status` shows
    next to each service's health.
    """

    def __init__(self, stack: Stack, say: Any = None, monotonic: Any = time.monotonic) -> None:
        self.stack = stack
        self.say = say or (lambda text: None)  # where a person watching sees restarts (`qmp up`'s console)
        self.monotonic = monotonic
        self.records = {service: ServiceRecord(started_at=monotonic(), answered_at=monotonic())
                        for service in stack.options.services}
        self._started: set[str] = set()  # a service is supervised once it has been started
        self._stopping: set[str] = set()  # stopped for failing its health: restarted once it has exited
        self._written = ""

    @property
    def file(self) -> Path:
        return self.stack.run_dir / SUPERVISOR_FILE

    async def run(self, until: Any = None) -> None:
        """Supervise until cancelled (or until `until()` is true).

        Processes are looked at ten times a second, so a crash costs its restart no more than that; health
        is asked every HEALTH_EVERY_S in a task of its own, so a service slow to answer never delays the
        restart of one that died.
        """
        nc = await self.stack.connection.connect(follow=True)
        health = asyncio.create_task(self._health_rounds(nc), name="supervisor-health")
        try:
            while until is None or not until():
                self.check_processes()
                if health.done():  # a bug in the health round must not pass unnoticed
                    health.result()
                await asyncio.sleep(EXIT_CHECK_S)
        finally:
            health.cancel()
            await asyncio.gather(health, return_exceptions=True)
            await nc.close()

    def check_processes(self) -> None:
        """Restart (or schedule the restart of) every started service whose process has exited."""
        now = self.monotonic()
        for service, record in self.records.items():
            process = self.stack.processes.get(service)
            if process is not None:
                self._started.add(service)
            elif service not in self._started or service in self._stopping:
                continue
            if process is None or process.poll() is not None:
                self._on_down(service, record, process, now)
        self._write_record()

    def _write_record(self) -> None:
        record = json.dumps({s: r.public() for s, r in self.records.items()}, indent=2)
        if record != self._written:  # `qmp status` reads it; rewrite it only when something changed
            write_private(self.file, record)
            self._written = record

    async def _health_rounds(self, nc: nats.NATS) -> None:
        while True:
            await self._check_health(nc, self.monotonic())
            if self.stack.options.warm_spares:
                self._prepare_one_spare()
            await asyncio.sleep(HEALTH_EVERY_S)

    def _prepare_one_spare(self) -> None:
        """Start one missing warm spare, for a running service: one a round, since a spare imports as much as a
        start does, and all of them at once would slow the stack's own start or a recovery on a small machine."""
        for service, record in self.records.items():
            running = service in self._started and record.restart_at is None and service not in self._stopping
            if running and self.stack.prepare_spare(service):
                log.info("warm spare started", extra={"service": service})
                return

    def _on_down(self, service: str, record: ServiceRecord, process: subprocess.Popen[bytes] | None,
                 now: float) -> None:
        if record.restart_at is None:  # just found down: say why, schedule the restart
            code = process.returncode if process is not None else None
            record.last_exit = record.stop_reason or _describe_exit(code)
            record.stop_reason = ""
            record.quick_failures = record.quick_failures + 1 if now - record.started_at < STABLE_AFTER_S else 0
            # The first death is restarted at once; one more soon after a start begins the backoff.
            delay = 0.0 if record.quick_failures <= 1 else min(
                RESTART_MAX_DELAY_S, RESTART_FIRST_DELAY_S * 2 ** (record.quick_failures - 2))
            record.restart_at = now + delay
            log.error("service down; restarting", extra={"service": service, "exit": record.last_exit,
                                                         "restart_in_s": delay})
            self.say(f"{service} {record.last_exit}; restarting in {delay:.1f}s "
                     f"(log: {self.stack.run_dir / 'logs' / (service + '.log')})")
        if now >= record.restart_at:
            self.stack.start_service(service)
            record.restarts += 1
            record.started_at = record.answered_at = now
            record.restart_at = None
            record.failing_since = None
            record.health = "starting"
            log.warning("service restarted", extra={"service": service, "restarts": record.restarts})
            self.say(f"{service} restarted ({record.restarts} restart{'s' if record.restarts > 1 else ''})")

    async def _check_health(self, nc: nats.NATS, now: float) -> None:
        services = [service for service, record in self.records.items()
                    if record.restart_at is None and service in self._started and service not in self._stopping]
        await asyncio.gather(*(self._check_one(nc, service, self.records[service], now) for service in services))

    async def _check_one(self, nc: nats.NATS, service: str, record: ServiceRecord, now: float) -> None:
        try:
            reply = await nc.request(subjects.health(service), b"", timeout=1.0)
            record.health = json.loads(reply.data).get("status", "ok")
            record.answered_at = now
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, ValueError):
            record.health = "not answering"
        if record.health == "failing":
            record.failing_since = record.failing_since or now
        else:
            record.failing_since = None
        failing_too_long = record.failing_since is not None and now - record.failing_since >= FAILING_FOR_S
        silent_too_long = now - record.answered_at >= SILENT_FOR_S
        if failing_too_long or silent_too_long:
            why = "health failing" if failing_too_long else f"no health answer for {SILENT_FOR_S:.0f}s"
            record.stop_reason = f"stopped by the supervisor: {why}"
            log.error("service unhealthy; stopping it to restart", extra={"service": service, "why": why})
            self._stopping.add(service)
            try:
                await asyncio.to_thread(self.stack.stop_service, service)
            finally:
                self._stopping.discard(service)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "not running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with {code}"


def read_supervisor_record(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Return what the supervisor of a run wrote down (empty when the run is not supervised here)."""
    try:
        return json.loads((Path(run_dir) / SUPERVISOR_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
