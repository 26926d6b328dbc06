"""The chaos suite: a replay with one real fault injected, compared day by day with an undisturbed run.

Each test replays January–May 2008 (bundled S&P 500 data) through the whole stack as processes, under
the supervisor `qmp up` uses, injects one fault (SIGKILL of a service, PostgreSQL stopped and started,
poisoned input) and compares with a golden run of the same window: every fill (id, side, quantity,
price), the book's equity at every day, one risk snapshot per day equal to the golden one, stream
counts equal table counts, no duplicate id. The recovery time is measured and printed.

The default run (`./dev test`, `.ci/run`) takes the quick subset: poisoned input, PostgreSQL down, a
SIGKILL of risk, a SIGKILL of the market-data stream's leader in a three-server NATS cluster. The whole
suite, with a table of the figures at the end:

    QMP_CHAOS=all ./dev test tests/chaos
"""

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import msgspec
import nats
import pytest

from qmp_core import bus, subjects
from qmp_core.datasets import load_sp500_index
from qmp_core.messages import BarBatch, DeadLetter, Fill, PortfolioSnapshot, RiskSnapshot, encode
from qmp_ops.replay import RunObserver
from qmp_ops.runtime.nats_server import EmbeddedNatsCluster
from qmp_ops.runtime.supervisor import Stack, StackOptions, Supervisor

pytestmark = [pytest.mark.system, pytest.mark.chaos]

ROOT = Path(__file__).resolve().parents[2]
START, END = "2008-01-01", "2008-05-31"
STRATEGY, VENUE = "chaos", "chaosv"
DAYS = len(load_sp500_index(START, END))
STALL_S = 90.0
# From the fault to the next new risk snapshot, restart included, beyond the time a server is kept down:
# a restarted service resumes within 5 s (a warm spare takes over at once; the in-flight message comes
# back after the 2 s ack wait).
RECOVERY_BOUND_S = 5.0
NATS_DOWN_S = 2.0
# A cluster's streams and buckets elect new leaders within seconds of losing a server (nats-server's election
# timeouts); a breaker command that met the election is asked again after the requester's timeout.
NATS_ELECTION_S = 10.0

# A fault gets the stack and the observer's connection (the core subscriber whose counts are compared).
Fault = Callable[[Stack, nats.NATS], Awaitable[None]]


@dataclass
class Outcome:
    fills: list[tuple[str, str, str, float, float]]
    equity: dict[int, float]
    risk: dict[int, tuple]
    fills_in_table: int
    risk_rows: int
    dead_letters: list[DeadLetter] = field(default_factory=list)
    recovery_s: float | None = None
    restarts: dict[str, int] = field(default_factory=dict)
    observed: tuple[int, int, int] = (0, 0, 0)  # what a core subscriber counted: accepted, denied, fills
    repeats: int = 0  # messages the core subscriber saw again under an id it had counted


def options(home: Path, cluster: bool = False) -> StackOptions:
    return StackOptions(home=home, clock="replay", warm_spares=True, cluster=cluster, service_env={
        "collector": {"QMP_SOURCE": "history", "QMP_VENUE": VENUE, "QMP_START": START, "QMP_END": END,
                      "QMP_REPLAY_RATE": "0", "QMP_LOCKSTEP_STRATEGY": STRATEGY},
        "execution": {"QMP_STRATEGIES": f"{STRATEGY}=qmp_test_strategies:DailyRebalancer",
                      "PYTHONPATH": str(ROOT / "tests" / "support")},
        # A short window, so VaR, ES and the backtests are live within the replay and a lost window shows;
        # a tight volatility breaker, so breaker commands (risk → deployer → execution) happen in it too.
        "risk": {"QMP_VAR_WINDOW": "20", "QMP_MIN_OBSERVATIONS": "5", "QMP_VOL_RATIO_LIMIT": "1.3",
                 "QMP_VOL_RATIO_RELEASE": "1.1"},
    })


async def read_all(nc: nats.NATS, stream: str, subject: str) -> list[bytes]:
    return [message.data async for message in bus.read_stream(nc, stream, subject)]


async def risk_days(js: nats.js.JetStreamContext) -> int:
    """Return how many risk snapshots of the strategy the stream holds (one per day, deduplicated by id)."""
    subject = subjects.snapshot(STRATEGY)
    try:
        info = await js.stream_info(subjects.STREAM_RISK, subjects_filter=subject)
    except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
        return -1  # the server is busy or restarting: ask again
    return info.state.subjects.get(subject, 0) if info.state.subjects else 0


async def stream_leader(nc: nats.NATS) -> str | None:
    """The server that leads the market-data stream now (None while one is being elected)."""
    try:
        info = await nc.jetstream().stream_info(subjects.STREAM_MARKET_DATA)
    except (nats.errors.TimeoutError, nats.js.errors.APIError):
        return None
    return info.cluster.leader if info.cluster is not None else None


def replay(home: Path, fault: Fault | None = None, fault_at_day: int = 0, cluster: bool = False) -> Outcome:
    """Run the window through a fresh stack under the supervisor; inject `fault` once `fault_at_day` is done."""
    stack = Stack(options(home, cluster))
    stack.start_servers()

    async def run() -> Outcome:
        supervisor = Supervisor(stack)
        nc = await stack.connection.connect(follow=True)
        js = nc.jetstream()
        observer = RunObserver(STRATEGY)  # counts on core subscriptions, as `qmp demo` does
        await observer.start(nc)
        recovery: float | None = None
        await stack.start_services()
        watching = asyncio.create_task(supervisor.run())
        try:
            done = 0
            fault_time: float | None = None
            fault_done = 0
            moved_at = time.monotonic()
            while done < DAYS:
                days = await risk_days(js)
                if days > done:
                    done, moved_at = days, time.monotonic()
                    if fault_time is not None and recovery is None and done > fault_done:
                        recovery = moved_at - fault_time
                if fault is not None and fault_time is None and done >= fault_at_day:
                    fault_time, fault_done = time.monotonic(), done
                    await fault(stack, nc)
                if time.monotonic() - moved_at > STALL_S:
                    raise AssertionError(f"the replay stalled after {done} days; logs in {stack.run_dir}")
                await asyncio.sleep(0.05)
            await whole_again(stack)
            outcome = await collect(stack, nc, recovery, supervisor)
            await wait_for_counts(observer, outcome)
            outcome.observed = (observer.accepted, observer.denied, observer.fills)
            outcome.repeats = observer.repeats
            return outcome
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            await nc.close()

    try:
        return asyncio.run(run())
    finally:
        stack.stop()


async def collect(stack: Stack, nc: nats.NATS, recovery: float | None,
                  supervisor: Supervisor) -> Outcome:
    fills = [msgspec.json.decode(m, type=Fill) for m in await read_all(nc, subjects.STREAM_EXEC,
                                                                        subjects.fills(STRATEGY))]
    books = [msgspec.json.decode(m, type=PortfolioSnapshot)
             for m in await read_all(nc, subjects.STREAM_EXEC, subjects.portfolio(STRATEGY))]
    risks = [msgspec.json.decode(m, type=RiskSnapshot)
             for m in await read_all(nc, subjects.STREAM_RISK, subjects.snapshot(STRATEGY))]
    letters: list[DeadLetter] = []
    for service in ("collector", "execution", "risk"):
        letters += [msgspec.json.decode(m, type=DeadLetter)
                    for m in await read_all(nc, subjects.STREAM_DLQ, subjects.dlq(service))]
    assert len({f.fill_id for f in fills}) == len(fills), "a fill published twice"
    assert len({b.ts_event for b in books}) == len(books), "a portfolio snapshot published twice"
    assert len({r.ts_event for r in risks}) == len(risks), "a risk snapshot published twice"
    connection = await asyncpg.connect(stack.database_url)
    try:
        # Execution and risk write a batch's rows just after publishing its snapshot (off the critical path):
        # give the last ones their moment; a row that never comes still fails the comparison.
        for _ in range(200):
            in_table = await connection.fetchval("SELECT count(*) FROM fills WHERE strategy = $1", STRATEGY)
            risk_rows = await connection.fetchval("SELECT count(*) FROM risk_snapshots WHERE strategy = $1",
                                                  STRATEGY)
            if in_table >= len(fills) and risk_rows >= len(risks):
                break
            await asyncio.sleep(0.05)
    finally:
        await connection.close()
    return Outcome(
        fills=[(f.fill_id, f.symbol, f.side, f.quantity, f.price) for f in fills],
        equity={b.ts_event: b.equity for b in books},
        risk={r.ts_event: (r.observations, r.var, r.es, r.drawdown_max, r.drawdown_24h, r.breakers) for r in risks},
        fills_in_table=in_table, risk_rows=risk_rows, dead_letters=letters, recovery_s=recovery,
        restarts={s: r.restarts for s, r in supervisor.records.items()},
    )


async def whole_again(stack: Stack, timeout_s: float = 30.0) -> None:
    """Wait until every service runs again: a replay that did not need the killed one ends before its restart."""
    for _ in range(int(timeout_s / 0.1)):
        if not stack.dead_services():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{stack.dead_services()} not restarted within {timeout_s:g}s; logs in {stack.run_dir}")


async def wait_for_counts(observer: RunObserver, outcome: Outcome, timeout_s: float = 10.0) -> None:
    """Give the core subscriber time to receive the last messages the streams already hold."""
    for _ in range(int(timeout_s / 0.05)):
        if observer.fills >= len(outcome.fills):
            return
        await asyncio.sleep(0.05)


def assert_same_as(golden: Outcome, run: Outcome, label: str) -> None:
    assert len(run.equity) == len(golden.equity) == DAYS, f"{label}: trading days lost"
    assert run.fills == golden.fills, f"{label}: fills differ"
    assert run.equity == golden.equity, f"{label}: equity differs on some day"
    differing = [ts for ts in golden.risk if run.risk.get(ts) != golden.risk[ts]]
    assert not differing, (f"{label}: risk snapshots differ on {len(differing)} days, first "
                           f"{[(ts, golden.risk[ts], run.risk.get(ts)) for ts in differing[:2]]}")
    assert run.fills_in_table == len(run.fills), f"{label}: fills table {run.fills_in_table} vs stream"
    assert run.risk_rows == len(run.risk), f"{label}: risk table {run.risk_rows} vs stream {len(run.risk)}"
    assert run.observed == golden.observed, f"{label}: a core subscriber counted {run.observed}, not {golden.observed}"


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    outcome = replay(tmp_path_factory.mktemp("golden") / ".qmp")
    assert outcome.fills and len(outcome.equity) == DAYS
    assert sum(1 for risk in outcome.risk.values() if risk[2]) > DAYS // 2  # ES live for most days
    return outcome


def report(label: str, run: Outcome, request: pytest.FixtureRequest | None = None) -> None:
    if request is not None:  # for the table at the end of the run (tests/chaos/conftest.py)
        request.node.user_properties.append(("chaos", {
            "fault": label, "days": f"{len(run.equity)}/{DAYS}", "fills": len(run.fills),
            "recovery_s": None if run.recovery_s is None else round(run.recovery_s, 2),
            "restarts": sum(run.restarts.values()), "dead_letters": len(run.dead_letters),
            "counted": f"{run.observed[2]} fills, {run.repeats} repeats skipped"}))
    print(f"\nchaos {label}: days {len(run.equity)}/{DAYS}, fills {len(run.fills)}, "  # noqa: T201
          f"recovery {run.recovery_s if run.recovery_s is None else round(run.recovery_s, 2)} s, "
          f"restarts {run.restarts}, dead letters {len(run.dead_letters)}, "
          f"core subscriber counted {run.observed} with {run.repeats} repeats skipped")
    for letter in run.dead_letters[:8]:
        print(f"  dead letter from {letter.service} on {letter.subject}: {letter.reason[:200]}")  # noqa: T201


def first_breaker_change(golden: Outcome) -> int:
    """Return the day (0-based, in the golden run) a breaker first trips or releases after the warm-up."""
    days = [golden.risk[ts][5] for ts in sorted(golden.risk)]
    changes = [i for i in range(1, DAYS) if days[i] != days[i - 1]]
    print(f"\nbreaker changes on days {changes}: {[days[i] for i in changes]}")  # noqa: T201
    return next((i for i in changes if i >= DAYS // 4), DAYS // 2)


@pytest.mark.parametrize("service", ["risk", pytest.param("execution", marks=pytest.mark.chaos_all),
                                     pytest.param("deployer", marks=pytest.mark.chaos_all)])
def test_chaos_when_service_sigkilled_mid_replay_then_restarted_and_results_identical(
    golden: Outcome, tmp_path: Path, service: str, request: pytest.FixtureRequest,
) -> None:
    async def kill(stack: Stack, observer: nats.NATS) -> None:
        os.kill(stack.processes[service].pid, signal.SIGKILL)

    # The deployer is killed the day before a breaker's command: the command must still land on its day.
    day = first_breaker_change(golden) - 1 if service == "deployer" else DAYS // 2
    run = replay(tmp_path / ".qmp", kill, fault_at_day=day)
    print(f"\nchaos SIGKILL {service} after day {day} of {DAYS}")  # noqa: T201
    report(f"SIGKILL {service}", run, request)
    assert run.restarts[service] == 1
    assert_same_as(golden, run, f"SIGKILL {service}")
    assert run.recovery_s is not None and run.recovery_s < RECOVERY_BOUND_S


@pytest.mark.chaos_all
def test_chaos_when_nats_server_sigkilled_and_restarted_on_same_store_then_nothing_counted_twice(
    golden: Outcome, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    async def restart_nats(stack: Stack, observer: nats.NATS) -> None:
        assert stack.nats is not None and stack.nats.process is not None
        stack.nats.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(stack.nats.process.wait, 30)
        await asyncio.sleep(NATS_DOWN_S)
        await asyncio.to_thread(stack.nats.start)  # same port, same JetStream store

    run = replay(tmp_path / ".qmp", restart_nats, fault_at_day=DAYS // 2)
    report("SIGKILL nats-server", run, request)
    assert_same_as(golden, run, "SIGKILL nats-server")
    assert run.observed[2] == len(run.fills)
    assert not run.dead_letters  # what was redelivered had been handled: acked again, not rejected
    assert run.recovery_s is not None and run.recovery_s < NATS_DOWN_S + RECOVERY_BOUND_S


def test_chaos_when_the_stream_leader_of_a_nats_cluster_sigkilled_then_replay_finishes_identical(
    golden: Outcome, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    killed: list[str] = []

    async def kill_leader(stack: Stack, observer: nats.NATS) -> None:
        assert isinstance(stack.nats, EmbeddedNatsCluster)
        # The observer counts on core subscriptions, which its server's death cuts (at most once): the server
        # killed is never the observer's, or the comparison would measure the observer rather than the stack.
        watching = observer._server_info.get("server_name")
        nc = await stack.connection.connect()
        try:  # the server that leads the market-data stream: its loss forces an election mid-replay
            leader = await stream_leader(nc)
            for _ in range(10):
                if leader not in (None, watching):
                    break
                await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{subjects.STREAM_MARKET_DATA}", b"", timeout=5)
                for _ in range(100):
                    await asyncio.sleep(0.05)
                    leader = await stream_leader(nc)
                    if leader not in (None, watching):
                        break
        finally:
            await nc.close()
        assert leader not in (None, watching), f"the market-data stream's leader stayed {watching}"
        node = next(node for node in stack.nats.nodes if node.cluster is not None and node.cluster.name == leader)
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)  # not restarted: the replay ends on two servers of three
        await asyncio.to_thread(node.process.wait, 30)
        killed.append(leader)

    run = replay(tmp_path / ".qmp", kill_leader, fault_at_day=DAYS // 2, cluster=True)
    report(f"SIGKILL NATS stream leader ({killed[0] if killed else '?'}) of 3", run, request)
    assert killed
    assert_same_as(golden, run, "SIGKILL NATS stream leader")
    assert not run.dead_letters
    assert run.recovery_s is not None and run.recovery_s < RECOVERY_BOUND_S + NATS_ELECTION_S


# 8 s in the default run; the 30 s of the outage that once lost two trading days in the whole suite.
@pytest.mark.parametrize("down_s", [8.0, pytest.param(30.0, marks=pytest.mark.chaos_all)])
def test_chaos_when_postgres_down_for_seconds_then_nothing_lost_and_results_identical(
    golden: Outcome, tmp_path: Path, request: pytest.FixtureRequest, down_s: float,
) -> None:
    async def restart_postgres(stack: Stack, observer: nats.NATS) -> None:
        assert stack.postgres is not None and stack.postgres.process is not None
        stack.postgres.process.send_signal(signal.SIGINT)  # fast shutdown: sessions are cut
        await asyncio.to_thread(stack.postgres.process.wait, 30)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(stack.postgres.start)

    run = replay(tmp_path / ".qmp", restart_postgres, fault_at_day=DAYS // 3)
    report(f"PostgreSQL down {down_s:g} s", run, request)
    assert_same_as(golden, run, "PostgreSQL restart")
    assert sum(run.restarts.values()) == 0  # waited out, not crashed
    assert run.recovery_s is not None and run.recovery_s < down_s + RECOVERY_BOUND_S


def test_chaos_when_poisoned_inputs_arrive_then_dead_lettered_and_results_identical(
    golden: Outcome, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    replies: list[dict] = []

    async def poison(stack: Stack, observer: nats.NATS) -> None:
        nc = await stack.connection.connect()
        js = nc.jetstream()
        try:
            def batch(venue: str, ts: int, symbols: list[str], price: float) -> bytes:
                n = len(symbols)
                return encode(BarBatch(venue=venue, ts_event=ts, symbols=symbols, open=[price] * n,
                                       high=[price] * n, low=[price] * n, close=[price] * n, volume=[1e3] * n))
            await js.publish(subjects.ingest(VENUE), batch(VENUE, 2**63 - 1, ["AAPL"], 100.0))  # from the future
            await js.publish(subjects.ingest(VENUE), batch(VENUE, 4_102_444_800 * 10**9, ["AAPL"], 100.0))  # 2100
            await js.publish(subjects.ingest(VENUE), batch(VENUE, 1_201_000_000 * 10**9, [], 100.0))  # empty
            await js.publish(subjects.ingest(VENUE), b'{"venue": "' + VENUE.encode() + b'", "ts_event": 1, '
                             b'"symbols": ["A\\u0000B"], "open": [1], "high": [1], "low": [1], "close": [1], '
                             b'"volume": [1]}')  # a NUL in a symbol
            # no such price, stamped inside the window ahead of the replay: it must not become the venue's time
            await js.publish(subjects.ingest(VENUE), batch(VENUE, 1_212_000_000 * 10**9, ["X"], 1e308))
            reply = await nc.request(subjects.control(STRATEGY), msgspec.json.encode(
                {"command": "halt", "reason": "poison", "command_id": "x" * 7_000}), timeout=5)
            replies.append(msgspec.json.decode(reply.data))
        finally:
            await nc.close()

    run = replay(tmp_path / ".qmp", poison, fault_at_day=DAYS // 4)
    report("poisoned inputs", run, request)
    assert_same_as(golden, run, "poisoned inputs")
    reasons = " | ".join(letter.reason for letter in run.dead_letters)
    assert reasons.count("from the future") >= 2
    assert "empty batch" in reasons and "price above" in reasons and "invalid BarBatch" in reasons
    assert replies and replies[0]["accepted"] is False and "command_id" in replies[0]["reason"]
