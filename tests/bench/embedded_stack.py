"""What the whole-stack benchmarks share: embedded NATS and PostgreSQL with TLS in a temporary folder, the
schema migrated, and the figures they print."""

import asyncio
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil

from qmp_core.db.migrate import migrate
from qmp_ops.runtime.certificates import ServerCertificates
from qmp_ops.runtime.nats_server import EmbeddedNats, NatsCredentials
from qmp_ops.runtime.postgres_server import EmbeddedPostgres


@contextmanager
def embedded_stack(prefix: str) -> Iterator[tuple[NatsCredentials, str]]:
    """Yield (NATS credentials, database URL) of servers that live as long as the block."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        run_dir = Path(tmp)
        certificates = ServerCertificates.issue(run_dir / "tls")
        nats = EmbeddedNats(run_dir / "nats", durable_names="any", certificates=certificates)
        postgres = EmbeddedPostgres(run_dir / "postgres", certificates=certificates)
        credentials = nats.start()
        try:
            database_url = postgres.start()
            asyncio.run(migrate(database_url))
            os.environ.pop("QMP_NATS_URL", None)  # the services connect to this server, not another
            yield credentials, database_url
        finally:
            postgres.stop()
            nats.stop()


def summary(values: list[float]) -> dict[str, float]:
    """min, p50 (the median), p99 and max of `values`."""
    array = np.asarray(values, dtype=float)
    return {"min": float(array.min()), "p50": float(np.percentile(array, 50)), "p99": float(np.percentile(array, 99)),
            "max": float(array.max())}


def machine() -> dict[str, float]:
    """The machine's load over the last minute and its CPUs, printed with every figure."""
    return {"load_1m": os.getloadavg()[0], "cpus": float(psutil.cpu_count() or 0)}
