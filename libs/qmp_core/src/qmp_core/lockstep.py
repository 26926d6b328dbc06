"""The lockstep replay: how a replay through three independent services gives the same numbers every run.

In a replay (`QMP_CLOCK=replay`, with `QMP_LOCKSTEP_STRATEGY` set on the collector) every batch t goes
through the whole loop before batch t + 1 exists, so nothing depends on which subscription a process
happens to read first:

1. collector publishes market-data batch t on `qmp.md.<venue>.bars`, then waits until risk has published
   a RiskSnapshot of the lockstep strategy with `ts_event >= t` (step 4), at most `lockstep_timeout_s`;
2. execution, before trading batch t, waits until its control watch holds every write the control bucket
   had when t arrived (a breaker's command from batch t - 1 is in force), and until each strategy's
   latest RiskSnapshot covers the batch it last traded (t - 1 is sized with the ES of t - 1); it trades
   t and publishes the PortfolioSnapshot of t;
3. risk, on the PortfolioSnapshot of t, waits until it holds the bars of t (its bar watermark), so VaR
   never depends on whether bars or portfolio arrived first;
4. risk revalues, sends any breaker command as a request and awaits the deployer's reply (so the write is
   in the bucket before step 1 ends), then publishes the RiskSnapshot of t.

Each wait is bounded: a service that is down costs a timeout (counted, logged, shown in health), not a
frozen replay. One exception keeps an outage out of the numbers: when step 1 times out while execution or
risk reports `degraded` (alive, retrying a dependency such as a database that is down), the collector
waits on with them; a service that is gone or silent still costs only the timeout. Live, only step 3's
wait applies (bars and portfolios still race on two subscriptions).

`Progress` is the one waiting primitive the three services use: something that advances (snapshots
seen, bars in, bucket writes applied) and a bounded wait until a condition over it holds.
"""

import asyncio
from collections.abc import Callable


class Progress:
    """Something that advances; `wait_until` returns once a condition over it holds, or False at the timeout."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.timeouts = 0  # waits that gave up: a replay that is no longer in lockstep
        self._changed = asyncio.Event()

    def advanced(self) -> None:
        """Wake the waiters: what they wait on may now hold."""
        self._changed.set()

    async def wait_until(self, condition: Callable[[], bool], timeout_s: float, counted: bool = True) -> bool:
        """Return True once `condition()` holds, re-checked on every advance; False after `timeout_s`.

        A timeout is counted in `timeouts` unless `counted` is False (a slice of a longer wait).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not condition():
            self._changed.clear()  # no await between the check and here, so no advance is missed
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.timeouts += counted
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue  # the loop re-checks once more, then counts the timeout
        return True
