"""What to do when a dependency (PostgreSQL, NATS, a venue) fails: one policy for every service.

A failure is *transient* when the same call can succeed later without anything about the input changing:
the connection dropped, the server is restarting, a timeout. Those are retried with exponential backoff
for as long as they last. Anything else is about the input (a value the database refuses) and is retried
never: the caller isolates the input and dead-letters it, so it cannot block what comes after it.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import asyncpg
import nats.errors
import nats.js.errors

FIRST_DELAY_S = 0.1
MAX_DELAY_S = 5.0
# SQLSTATE classes of a server that is going away, restarting or out of resources (not of the input).
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "53", "57P", "58")
_TRANSIENT = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.exceptions.PostgresConnectionError,
    nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError, nats.errors.ConnectionDrainingError, nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError, nats.errors.NoServersError, nats.errors.FlushTimeoutError,
    nats.js.errors.ServiceUnavailableError,
)

T = TypeVar("T")
log = logging.getLogger(__name__)


class Unavailable(ConnectionError):
    """Something this call needs is not there yet (a dependency, or the service's own start): retry later."""


def is_transient(error: BaseException) -> bool:
    """Return whether `error` says a dependency is unavailable (retry later) rather than the input is bad."""
    if isinstance(error, _TRANSIENT):
        return True
    if isinstance(error, asyncpg.PostgresError):
        return (getattr(error, "sqlstate", "") or "").startswith(_TRANSIENT_SQLSTATE_PREFIXES)
    return False


def delays(first_s: float = FIRST_DELAY_S, max_s: float = MAX_DELAY_S) -> Iterator[float]:
    """Yield the waits between attempts: doubling from `first_s`, capped at `max_s`, forever."""
    delay = first_s
    while True:
        yield delay
        delay = min(delay * 2.0, max_s)


async def until_available(attempt: Callable[[], Awaitable[T]], what: str,
                          on_retry: Callable[[BaseException | None], None] | None = None,
                          sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> T:
    """Return `attempt()`, retried with backoff while it fails transiently; raise what is not transient.

    `on_retry(error)` is told of each failure (for health) and `on_retry(None)` of the recovery.
    """
    failures = 0
    for delay in delays():
        try:
            result = await attempt()
        except Exception as error:
            if not is_transient(error):
                raise
            failures += 1
            if on_retry is not None:
                on_retry(error)
            if failures == 1 or failures % 10 == 0:
                log.warning("dependency unavailable; retrying", extra={"what": what, "attempt": failures,
                                                                       "error": repr(error), "retry_in_s": delay})
            await sleep(delay)
            continue
        if failures:
            log.info("dependency available again", extra={"what": what, "attempts": failures + 1})
            if on_retry is not None:
                on_retry(None)
        return result
    raise AssertionError("unreachable: delays() never ends")
