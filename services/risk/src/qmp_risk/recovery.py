"""Risk after a restart: the engine rebuilt from the streams, as if it had never stopped.

Everything risk knows is a function of what it consumed: bar batches, portfolio snapshots, news events
and the trading state. At start, before the subscribers take new messages, the messages each durable
consumer has already acknowledged are read back and fed to a fresh engine in the order the running
service saw them (a snapshot after every bar batch of its timestamp, news first), with no side effect:
commands, events and rows were sent the first time. The control bucket then tells which halts are in
force. Windows, drawdown peaks, breaker latches, backtest forecasts and the duplicate-detection of the
last snapshot come back; the redelivered message in flight, if any, is then handled as a redelivery.
"""

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from qmp_core import bus, subjects
from qmp_core.messages import BarBatch, NewsEvent, PortfolioSnapshot, TradingState, codec
from qmp_risk.config import RiskSettings
from qmp_risk.engine import RiskEngine

T = TypeVar("T")
log = logging.getLogger("qmp_risk")


@dataclass(frozen=True)
class Rebuilt:
    bars: int = 0
    snapshots: int = 0
    news: int = 0
    seconds: float = 0.0


async def rebuild(engine: RiskEngine, nc: Client, settings: RiskSettings) -> Rebuilt:
    """Feed the engine what risk's consumers have acknowledged; return how much it took.

    The streams are read with direct gets (`bus.read_stream`): risk holds no grant to create consumers
    on streams other services consume from.
    """
    started = time.perf_counter()
    js = nc.jetstream()
    floors = {
        "bars": await _ack_floor(js, subjects.STREAM_MARKET_DATA, settings.consumer("bars")),
        "portfolio": await _ack_floor(js, subjects.STREAM_EXEC, settings.consumer("portfolio")),
        "news": await _ack_floor(js, subjects.STREAM_MARKET_DATA, settings.consumer("news")),
    }
    if not any(floors.values()):
        return Rebuilt()
    news = 0
    async for msg in bus.read_stream(nc, subjects.STREAM_MARKET_DATA, subjects.NEWS_EVENTS, upto_seq=floors["news"]):
        event = _decode(NewsEvent, msg)
        if event is not None and event.end > event.start:
            engine.on_news(event)
            news += 1
    snapshots = [s async for s in _decoded(nc, subjects.STREAM_EXEC, subjects.PORTFOLIO_ALL,
                                           floors["portfolio"], PortfolioSnapshot)]
    fed = bars = 0
    async for msg in bus.read_stream(nc, subjects.STREAM_MARKET_DATA, subjects.MARKET_DATA_BARS_ALL,
                                     upto_seq=floors["bars"]):
        batch = _decode(BarBatch, msg)
        if batch is None:
            continue
        # Risk handles a snapshot once the bars of its timestamp are in: feed those before later bars.
        while fed < len(snapshots) and snapshots[fed].ts_event < batch.ts_event:
            _feed_snapshot(engine, snapshots[fed])
            fed += 1
        try:
            engine.on_bars(batch)
            bars += 1
        except ValueError:  # rejected the first time too (dead-lettered then)
            continue
    for snapshot in snapshots[fed:]:
        _feed_snapshot(engine, snapshot)
    await _apply_trading_states(engine, js)
    rebuilt = Rebuilt(bars, len(snapshots), news, round(time.perf_counter() - started, 3))
    log.info("risk rebuilt from the streams", extra={"bars": bars, "snapshots": len(snapshots), "news": news,
                                                    "seconds": rebuilt.seconds})
    return rebuilt


def _feed_snapshot(engine: RiskEngine, snapshot: PortfolioSnapshot) -> None:
    try:
        engine.on_portfolio(snapshot)
    except ValueError:  # rejected the first time too
        pass


async def _apply_trading_states(engine: RiskEngine, js: JetStreamContext) -> None:
    """Confirm the halts in force; a latch whose strategy trades again was released by a resume."""
    entries = await bus.read_control_entries(js)
    for strategy in sorted(entries.strategies()):
        state: TradingState = entries.effective(strategy)
        if state.status != "HALTED":
            engine.on_trading_state(msgspec.structs.replace(state, status="HALTED"))
        engine.on_trading_state(state)


async def _ack_floor(js: JetStreamContext, stream: str, durable: str) -> int:
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        return 0
    return info.ack_floor.stream_seq if info.ack_floor is not None else 0


async def _decoded(nc: Client, stream: str, subject: str, upto_seq: int,
                   type_: type[T]) -> AsyncIterator[T]:
    async for msg in bus.read_stream(nc, stream, subject, upto_seq=upto_seq):
        message = _decode(type_, msg)
        if message is not None:
            yield message


def _decode(type_: type[T], msg: bus.StoredMessage) -> T | None:
    try:
        return codec(type_).decode(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # dead-lettered the first time
