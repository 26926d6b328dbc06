"""Every message on the bus: frozen msgspec Structs, JSON on the wire (bars also in a binary form).

Commands are imperative (`Halt`), events past tense (`OrderDenied`, `BreakerTripped`). Every message has
`ts_event` (int ns, event time) and `schema`. Fields are only ever added, at the end, with defaults.
One Encoder and one Decoder per type, reused: see `codec()`; `wire()` gives what a publisher sends.

The binary form of a BarBatch (`Content-Type: application/vnd.qmp.bars+msgpack`) is a MessagePack array of
the fields in order, each price and volume column as the bytes of little-endian float64s: less than half
the bytes of the JSON, and a third of the time to decode (profiled: JSON bars were 8% of risk's CPU).
A message without a Content-Type header is JSON; a reader that ignores headers can tell the two by the
first byte (a JSON object starts with `{`, the MessagePack array with 0x9d).
"""

import math
import re
from functools import cache
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
import numpy as np
from msgspec import Meta, Struct

SCHEMA_VERSION = 1

Status = Literal["ACTIVE", "REDUCING", "HALTED"]
Source = Literal["operator", "risk", "deployer"]
Side = Literal["BUY", "SELL"]
Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]
PositiveFraction = Annotated[float, Meta(gt=0.0, le=1.0)]
Token = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
# Bounds on what a sender can make a service hold or write: a longer value is a decode error (a dead letter
# or a refused request), never a row in the audit trail or a key in the control bucket.
MAX_SYMBOLS_PER_BATCH = 10_000
CommandId = Annotated[str, Meta(max_length=128)]
OptionalToken = Annotated[str, Meta(pattern=r"^([A-Za-z0-9_-]{1,64})?$")]  # a token, or "" for none
Reason = Annotated[str, Meta(max_length=1_000)]
SYMBOL_MAX_LENGTH = 64
SYMBOL_CONTROL_CHARS = r"[\x00-\x1f\x7f]"
Symbol = Annotated[str, Meta(min_length=1, max_length=SYMBOL_MAX_LENGTH,
                             pattern=rf"^[^{SYMBOL_CONTROL_CHARS[1:-1]}]+$")]  # no control chars
Column = Annotated[list[float], Meta(max_length=MAX_SYMBOLS_PER_BATCH)]


# ---------------------------------------------------------------- market data
class BarBatch(Struct, frozen=True, kw_only=True):
    """One timestamp's bars for a universe (or a chunk of it), as columns."""

    venue: Token
    ts_event: int
    symbols: Annotated[list[Symbol], Meta(max_length=MAX_SYMBOLS_PER_BATCH)]
    open: Column
    high: Column
    low: Column
    close: Column
    volume: Column
    seq: int = 0
    chunk: int = 0
    chunks: int = 1
    ts_init: int = 0
    schema: int = SCHEMA_VERSION


# ---------------------------------------------------------------- control
def _keep_first_name(message: Struct, name: str, first_name: str) -> None:
    """Keep a field and its first name equal: the new name wins when set; readers of either see the value.

    Fields are renamed this way so that one idea has one name in new code while messages already written,
    and clients that know only the first name, keep working (a field never changes meaning).
    """
    value = getattr(message, name) or getattr(message, first_name)
    msgspec.structs.force_setattr(message, name, value)
    msgspec.structs.force_setattr(message, first_name, value)


# Control messages hold only scalars and other frozen messages, so they can never be part of a reference
# cycle: `gc=False` keeps the deployer's many remembered replies and entries out of the collector's scans.
class ControlCommandBase(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="command", gc=False):
    issued_by: Source = "operator"
    command_id: CommandId = ""
    ts_event: int = 0
    schema: int = SCHEMA_VERSION


class Halt(ControlCommandBase, tag="halt"):
    """Stop new orders; latched until an explicit resume."""

    reason: Annotated[str, Meta(min_length=1, max_length=1_000)] = "unspecified"


class Kill(Halt, tag="kill"):
    """The kill switch: a halt (latched until a resume) that also withdraws every working order of the
    strategy at its venue at once, not at the next batch, and with `flatten` closes every position with
    orders that only reduce it. Execution reports what the venue confirmed in a `KillReport`."""

    reason: Annotated[str, Meta(min_length=1, max_length=1_000)] = "kill switch"
    flatten: bool = False


class Resume(ControlCommandBase, tag="resume"):
    """Lift a halt: `safe` at half size until the next clean evaluation, `normal` fully."""

    mode: Literal["safe", "normal"] = "normal"


class SetAllocation(ControlCommandBase, tag="set_allocation"):
    allocation: Fraction


class ReduceOrderSize(ControlCommandBase, tag="reduce_order_size"):
    """Cut order size: the issuing source's entry takes `size_multiplier` (1.0 lifts that source's cut)."""

    size_multiplier: PositiveFraction | None = None
    factor: PositiveFraction | None = None  # the first name of size_multiplier: still read, always written

    def __post_init__(self) -> None:
        # One idea, one name (size_multiplier, as in TradingState); clients that send `factor` keep working,
        # and readers of either name see the value.
        if self.size_multiplier is not None and self.factor is not None and self.size_multiplier != self.factor:
            raise ValueError(f"size_multiplier {self.size_multiplier} and factor (its former name) {self.factor} "
                             "disagree; send size_multiplier only")
        value = self.size_multiplier if self.size_multiplier is not None else self.factor
        if value is None:
            raise ValueError("reduce_order_size needs size_multiplier (in (0, 1])")
        msgspec.structs.force_setattr(self, "size_multiplier", value)
        msgspec.structs.force_setattr(self, "factor", value)


class Defensive(ControlCommandBase, tag="defensive"):
    on: bool
    max_order_fraction: Fraction = 1.0  # order-size cap while on (risk's news breaker tightens it)


class ReleaseSafeMode(ControlCommandBase, tag="release_safe_mode"):
    """Sent after a clean evaluation: a `resume --safe` returns to full size."""


ControlCommand = Halt | Kill | Resume | SetAllocation | ReduceOrderSize | Defensive | ReleaseSafeMode


class TradingState(Struct, frozen=True, kw_only=True, gc=False):
    """One source's entry in the control bucket, or the effective combination of all of them."""

    strategy: str
    status: Status = "ACTIVE"
    allocation: Fraction = 1.0
    size_multiplier: Fraction = 1.0
    max_order_fraction: Fraction = 1.0
    defensive: bool = False
    reason: str = ""
    safe_mode: bool = False
    updated_by: str = ""
    command_id: str = ""
    ts_event: int = 0
    schema: int = SCHEMA_VERSION
    issued_by: str = ""  # who last changed it (a source); `updated_by` is its first name, still read and written
    # A kill in force (its command id; "" if none) and whether it flattens: execution acts on each kill once.
    kill_id: str = ""
    flatten: bool = False
    # The W3C trace context of the command that set this entry (a bucket entry carries no headers): the
    # orders execution denies under the state join that command's trace, so a halt's trace ends in them.
    traceparent: str = ""

    def __post_init__(self) -> None:
        _keep_first_name(self, "issued_by", "updated_by")



class ControlReply(Struct, frozen=True, kw_only=True, gc=False):
    accepted: bool
    reason: str = ""
    command_id: str = ""
    duplicate: bool = False
    state: TradingState | None = None
    ts_event: int = 0
    schema: int = SCHEMA_VERSION
    # Not decided, not refused: the deployer cannot decide yet (it is starting). Send the same command (same
    # command_id) again shortly; it is applied once.
    retry: bool = False


class ControlApplied(Struct, frozen=True, kw_only=True, gc=False):
    """Audit record of an accepted control command."""

    strategy: str
    command: ControlCommand
    state: TradingState
    ts_event: int
    schema: int = SCHEMA_VERSION
    sender: str = ""  # the NATS user that sent it (authenticated by the server); command.issued_by is its entry


# ---------------------------------------------------------------- pre-trade limits
Amount = Annotated[float, Meta(ge=0.0)]
Count = Annotated[int, Meta(ge=0)]
MAX_RESTRICTED_SYMBOLS = 10_000


class PreTradeLimits(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Pre-trade limits an operator sets for a strategy, or for every strategy (`ALL`), over execution's
    settings. A field left out keeps the level below: a strategy's limits over `ALL`'s over the settings
    (`QMP_MAX_ORDER_NOTIONAL`, ...). 0 turns a check off; what each one checks: docs/OPERATIONS.md."""

    max_order_notional: Amount | None = None
    max_order_quantity: Amount | None = None
    price_band: Amount | None = None
    price_collar: Amount | None = None
    max_position_notional: Amount | None = None
    max_gross_exposure: Amount | None = None
    cash_borrow_limit: Amount | None = None
    restricted_symbols: Annotated[list[Symbol], Meta(max_length=MAX_RESTRICTED_SYMBOLS)] | None = None
    max_order_rate: Count | None = None  # orders per second
    max_cancel_rate: Count | None = None  # cancels of working orders for a new target, per second
    max_repeated_fills: Count | None = None
    repeated_fills_window_s: Annotated[float, Meta(gt=0.0)] | None = None


class SetLimits(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An operator's request on `qmp.limits.<sender>.<strategy>`: the strategy's limits become `limits`, all
    of them (a field not given goes back to the level below; none given: the strategy has no limits of its
    own). Sent again with the same `command_id`, it is applied once."""

    limits: PreTradeLimits = PreTradeLimits()
    command_id: CommandId = ""
    reason: Reason = ""
    ts_event: int = 0
    schema: int = SCHEMA_VERSION


class LimitsEntry(Struct, frozen=True, kw_only=True):
    """A strategy's limits (or `ALL`'s) in the `qmp_limits` bucket, under the strategy's key."""

    strategy: str
    limits: PreTradeLimits
    sender: str  # the operator who set them (the NATS user of the request)
    command_id: str = ""
    reason: str = ""
    ts_event: int = 0
    schema: int = SCHEMA_VERSION


class LimitsChanged(Struct, frozen=True, kw_only=True):
    """The audit record of a change of a strategy's limits, on `qmp.audit.limits.<strategy>`."""

    strategy: str
    before: PreTradeLimits
    after: PreTradeLimits
    changed: list[str]  # the limits whose value changed
    sender: str
    command_id: str = ""
    reason: str = ""
    ts_event: int = 0
    schema: int = SCHEMA_VERSION


class LimitsReply(Struct, frozen=True, kw_only=True):
    accepted: bool
    reason: str = ""
    changed: list[str] = []  # the limits whose value changed (none: they were already so)
    entry: LimitsEntry | None = None  # the strategy's limits now (None: none of its own)
    duplicate: bool = False  # a request already applied (same command_id): nothing done again
    ts_event: int = 0
    schema: int = SCHEMA_VERSION


# ---------------------------------------------------------------- accounts
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3,5}$")]
Capital = Annotated[float, Meta(gt=0.0, le=1e15)]


class SetAccount(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An operator's request on `qmp.accounts.<sender>.<account>`: the account becomes exactly this (its venue,
    base currency and capital), or, with `remove`, goes (refused while a rollout trades from it). Sent again
    with the same `command_id`, it is applied once."""

    venue: Token = "paper"
    currency: Currency = "USD"
    capital: Capital | None = None  # required unless `remove`
    remove: bool = False
    command_id: CommandId = ""
    reason: Reason = ""
    ts_event: int = 0
    schema: int = SCHEMA_VERSION


class Account(Struct, frozen=True, kw_only=True):
    """A trading account in the `qmp_accounts` bucket, under its id: the venue its strategies trade at, its base
    currency and the capital they share (the sum of their live allocations never exceeds it)."""

    account: str
    venue: str
    currency: str
    capital: float
    sender: str  # the operator who set it (the NATS user of the request)
    command_id: str = ""
    reason: str = ""
    ts_event: int = 0
    schema: int = SCHEMA_VERSION


class AccountChanged(Struct, frozen=True, kw_only=True):
    """The audit record of an account added, changed or removed, on `qmp.audit.accounts.<account>`."""

    account: str
    before: Account | None
    after: Account | None  # None: removed
    sender: str
    command_id: str = ""
    reason: str = ""
    ts_event: int = 0
    schema: int = SCHEMA_VERSION


class AccountReply(Struct, frozen=True, kw_only=True):
    accepted: bool
    reason: str = ""
    account: Account | None = None  # the account now (None: there is none)
    duplicate: bool = False  # a request already applied (same command_id): nothing done again
    ts_event: int = 0
    schema: int = SCHEMA_VERSION


# ---------------------------------------------------------------- execution
class OrderDecisionBase(Struct, frozen=True, kw_only=True, tag_field="event"):
    strategy: str
    order_id: str
    symbol: str
    side: Side
    quantity: float
    price: float
    ts_event: int
    schema: int = SCHEMA_VERSION
    deployment_id: str = ""  # the rollout the order belongs to (its rollout_id); "" when the strategy has none


class OrderAccepted(OrderDecisionBase, tag="OrderAccepted"):
    reason: str = ""  # how it was sized and what capped it, for a person
    reason_code: str = ""  # why it was sent when not for the strategy's target (STOP_LOSS); empty otherwise
    es_key: str = ""  # the RiskSnapshot ES key (`<method>_<level>`) that scaled it down to the ES budget, "" if none


class OrderDenied(OrderDecisionBase, tag="OrderDenied"):
    reason: str = ""
    reason_code: str = ""
    count: int = 1  # denials this event stands for: repeats under one trading state are published once, counted


OrderDecision = OrderAccepted | OrderDenied


class Fill(Struct, frozen=True, kw_only=True):
    strategy: str
    order_id: str
    fill_id: str
    symbol: str
    side: Side
    quantity: float
    price: float
    arrival_price: float
    slippage_bps: float
    fee: float
    ts_event: int
    schema: int = SCHEMA_VERSION
    participation: float = 0.0  # this fill's size / (average daily volume × execution time)
    daily_vol: float = 0.0  # the symbol's daily volatility the slippage model used
    adv: float = 0.0  # average daily volume in shares (0: unknown)
    remaining: float = 0.0  # the order's quantity still working after this fill
    deployment_id: str = ""  # the rollout of the order it fills (its rollout_id); "" when none
    # The cost the slippage model predicts for this fill (no noise), in bps of the price it filled against;
    # None where no model priced it (a position adopted from a venue). Realized minus model is the model's miss.
    model_slippage_bps: float | None = None


class PortfolioSnapshot(Struct, frozen=True, kw_only=True):
    """A strategy's book after a batch: what risk revalues and what execution recovers from."""

    strategy: str
    ts_event: int
    cash: float
    equity: float
    symbols: list[str]
    quantities: list[float]
    prices: list[float]
    last_seq: int = 0
    orders_total: int = 0
    denied_total: int = 0
    fills_total: int = 0
    schema: int = SCHEMA_VERSION
    realized_pnl: float = 0.0  # since inception, before fees
    unrealized_pnl: float = 0.0
    fees: float = 0.0  # since inception
    avg_prices: list[float] = []  # average entry price per symbol, aligned with `symbols`
    working: list["WorkingOrder"] = []  # accepted orders not yet completely filled
    stop_losses: list["StopLossInForce"] = []  # risk stop-losses still closing their positions
    venue: str = ""  # the venue whose prices mark this book ("" before its first batch)
    # Orders withdrawn here that an external venue has not been seen to end (a cancel can cross a fill):
    # a restart keeps asking the venue about them, so a fill that crossed the cancel is booked once.
    withdrawn: list["WorkingOrder"] = []

    def gross_exposure(self) -> float:
        """The sum of |quantity × price| over the positions (0 when a price or quantity is not finite)."""
        gross = math.fsum(abs(q * p) for q, p in zip(self.quantities, self.prices, strict=False))
        return gross if math.isfinite(gross) else 0.0


# ---------------------------------------------------------------- risk
class PositionRisk(Struct, frozen=True, kw_only=True):
    """One position in a RiskSnapshot: its drawdowns from entry and from its best price, and its own VaR / ES."""

    symbol: str
    quantity: float
    price: float
    weight: float  # quantity * price / equity, signed
    entry_price: float  # average entry price of the current position
    peak_price: float  # best price since entry in the position's favour (highest long, lowest short)
    pnl_from_entry: float  # fraction of the entry value; a loss is negative
    drawdown_from_peak: float  # adverse move from peak_price, a positive fraction
    var: dict[str, float] = {}  # this position alone, full revaluation, fraction of equity
    es: dict[str, float] = {}
    stop_loss: bool = False  # its stop-loss has fired (ClosePosition sent)


class VarBacktest(Struct, frozen=True, kw_only=True):
    """Backtest of one VaR / ES forecast (method and level) over the last `observations` days."""

    observations: int
    exceptions: int
    expected: float  # observations * (1 - level)
    kupiec_p: float  # proportion of failures
    christoffersen_p: float  # independence of exceptions
    conditional_coverage_p: float
    zone: str  # Basel traffic light: green, yellow, red
    es_z2: float | None = None  # Acerbi-Szekely Z2: 0 when ES is right, negative when it understates
    es_zone: str = ""


class RiskSnapshot(Struct, frozen=True, kw_only=True):
    """VaR and ES are positive loss fractions of equity, keyed `<method>_<level>` (e.g. historical_99)."""

    strategy: str
    ts_event: int
    equity: float
    var: dict[str, float]
    es: dict[str, float]
    drawdown_24h: float
    drawdown_max: float
    volatility_ratio: float
    breakers: list[str]
    observations: int = 0
    status: str = "ok"
    schema: int = SCHEMA_VERSION
    drawdown: float = 0.0  # current, from the peak since inception
    volatility: float | None = None  # realized vol of the strategy's returns, per snapshot period
    positions: list[PositionRisk] = []
    symbol_risk: dict[str, dict[str, float]] = {}  # per held symbol: its own return VaR keys, vol, vol_ratio
    backtests: dict[str, VarBacktest] = {}  # keyed like var
    errors: dict[str, str] = {}  # measure -> why it is missing
    # The backtest observation this snapshot realized: the hypothetical return (share of the previous equity) of
    # the previous snapshot's positions at this snapshot's prices, which the previous VaR / ES forecast; None
    # when it is not one (the first snapshot, a position that could not be revalued). -realized_return above the
    # previous snapshot's var[key] is an exception of that measure.
    realized_return: float | None = None
    # The account the strategy trades from ("": none) and the account's measures at this snapshot: its equity
    # (capital plus its strategies' P&L), drawdown over the trailing window, ES of its returns (share of equity).
    account: str = ""
    account_equity: float | None = None
    account_drawdown_24h: float | None = None
    account_es: float | None = None


class BreakerEventBase(Struct, frozen=True, kw_only=True, tag_field="event"):
    strategy: str
    breaker: str
    value: float
    threshold: float
    action: str
    ts_event: int
    schema: int = SCHEMA_VERSION
    detail: str = ""  # what caused it, in words (symbol, event, timestamps)


class BreakerTripped(BreakerEventBase, tag="BreakerTripped"):
    pass


class BreakerReleased(BreakerEventBase, tag="BreakerReleased"):
    pass


BreakerEvent = BreakerTripped | BreakerReleased


class ClosePosition(Struct, frozen=True, kw_only=True):
    """Close one position now (a risk stop-loss), on `qmp.risk.<strategy>.stoploss`.

    Execution closes the position on the strategy's next batch (an order with reason code STOP_LOSS).
    """

    strategy: str
    symbol: str
    quantity: float  # the order that flattens the position: minus the position
    reason: str
    command_id: str
    price: float
    entry_price: float
    loss: float  # fraction lost from the entry price, positive
    issued_by: Source = "risk"
    ts_event: int = 0
    schema: int = SCHEMA_VERSION


class NewsEvent(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A calendar entry: a high-impact event puts strategies in defensive mode from `start` to `end` (int ns)."""

    event_id: Token
    name: str
    start: int
    end: int
    impact: Literal["low", "medium", "high"] = "high"
    strategies: list[str] = []  # empty: every strategy
    ts_event: int = 0
    schema: int = SCHEMA_VERSION


# ---------------------------------------------------------------- operations
class DeadLetter(Struct, frozen=True, kw_only=True):
    service: str
    subject: str
    reason: str
    payload: str
    ts_event: int
    schema: int = SCHEMA_VERSION


class HealthReply(Struct, frozen=True, kw_only=True):
    service: str
    status: str
    pid: int
    ts_event: int
    detail: dict[str, Any] = {}
    schema: int = SCHEMA_VERSION


T = TypeVar("T")


CONTENT_TYPE_JSON = "application/json"
CONTENT_TYPE_BARS = "application/vnd.qmp.bars+msgpack"
_MSGPACK_ARRAY_FIRST_BYTES = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}


class Codec(Generic[T]):
    """A reused JSON encoder/decoder pair for one message type (or tagged union)."""

    def __init__(self, type_: Any) -> None:
        self.type = type_
        self.decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(type_)
        self.encoder = msgspec.json.Encoder()

    def decode(self, data: bytes | str, content_type: str | None = None) -> T:
        """Decode a payload; `content_type` is the message's Content-Type header (absent: JSON)."""
        if content_type not in (None, CONTENT_TYPE_JSON):
            raise msgspec.DecodeError(f"unsupported Content-Type {content_type!r} for {self._name()}")
        return self.decoder.decode(data)

    def encode(self, message: Any) -> bytes:
        return self.encoder.encode(message)

    def _name(self) -> str:
        return getattr(self.type, "__name__", str(self.type))


_Column = Annotated[bytes, Meta(max_length=8 * MAX_SYMBOLS_PER_BATCH)]


class _BarColumns(Struct, array_like=True, frozen=True, gc=False):
    """A BarBatch's binary form: its fields in order, the float columns as little-endian float64 bytes."""

    venue: Token
    ts_event: int
    symbols: Annotated[list[str], Meta(max_length=MAX_SYMBOLS_PER_BATCH)]
    open: _Column
    high: _Column
    low: _Column
    close: _Column
    volume: _Column
    seq: int = 0
    chunk: int = 0
    chunks: int = 1
    ts_init: int = 0
    schema: int = SCHEMA_VERSION


_CONTROL_CHAR = re.compile(SYMBOL_CONTROL_CHARS)
_ARRAY_PATH = re.compile(r"`\$\[(\d+)\]")


def _field_path(match: re.Match[str]) -> str:
    index = int(match.group(1))
    fields = _BarColumns.__struct_fields__
    return f"`$.{fields[index]}" if index < len(fields) else match.group(0)


class BarsCodec(Codec[BarBatch]):
    """BarBatch in JSON or in its binary form (`CONTENT_TYPE_BARS`), to the same Struct and the same checks."""

    def __init__(self) -> None:
        super().__init__(BarBatch)
        self.binary_encoder = msgspec.msgpack.Encoder()
        self.binary_decoder = msgspec.msgpack.Decoder(_BarColumns)

    def decode(self, data: bytes | str, content_type: str | None = None) -> BarBatch:
        binary = content_type == CONTENT_TYPE_BARS or (
            content_type is None and isinstance(data, bytes) and data[:1] != b"" and
            data[0] in _MSGPACK_ARRAY_FIRST_BYTES)
        if not binary:
            return super().decode(data, content_type)
        try:
            wire = self.binary_decoder.decode(data)
        except msgspec.ValidationError as error:  # name the field, as the JSON form's errors do
            raise msgspec.ValidationError(_ARRAY_PATH.sub(_field_path, str(error))) from None
        # What BarBatch's Symbol type checks per item in JSON, checked once over the whole list here.
        lengths = list(map(len, wire.symbols))
        if lengths and (min(lengths) < 1 or max(lengths) > SYMBOL_MAX_LENGTH):
            raise msgspec.ValidationError(f"a symbol must be 1 to {SYMBOL_MAX_LENGTH} characters - at `$.symbols`")
        if _CONTROL_CHAR.search("".join(wire.symbols)):
            raise msgspec.ValidationError("a symbol holds a control character - at `$.symbols`")
        columns = []
        for name in ("open", "high", "low", "close", "volume"):
            raw = getattr(wire, name)
            if len(raw) % 8:
                raise msgspec.ValidationError(f"a column must be whole float64s - at `$.{name}`")
            columns.append(np.frombuffer(raw, dtype="<f8").tolist())
        return BarBatch(venue=wire.venue, ts_event=wire.ts_event, symbols=wire.symbols, open=columns[0],
                        high=columns[1], low=columns[2], close=columns[3], volume=columns[4], seq=wire.seq,
                        chunk=wire.chunk, chunks=wire.chunks, ts_init=wire.ts_init, schema=wire.schema)

    def encode_binary(self, batch: BarBatch) -> bytes:
        def column(values: list[float]) -> bytes:
            return np.asarray(values, dtype="<f8").tobytes()

        return self.binary_encoder.encode(_BarColumns(
            batch.venue, batch.ts_event, batch.symbols, column(batch.open), column(batch.high), column(batch.low),
            column(batch.close), column(batch.volume), batch.seq, batch.chunk, batch.chunks, batch.ts_init,
            batch.schema))


@cache
def codec(type_: Any) -> Codec[Any]:
    """Return the shared codec of a message type."""
    return BarsCodec() if type_ is BarBatch else Codec(type_)


def encode(message: Any) -> bytes:
    return _ENCODER.encode(message)


def wire(message: Any) -> tuple[bytes, str]:
    """Return what a publisher sends for a message, and its Content-Type: bars in binary, the rest JSON."""
    if type(message) is BarBatch:
        return _BARS.encode_binary(message), CONTENT_TYPE_BARS
    return _ENCODER.encode(message), CONTENT_TYPE_JSON


_ENCODER = msgspec.json.Encoder()
_BARS = BarsCodec()

PUBLIC_MESSAGES: dict[str, Any] = {
    "BarBatch": BarBatch,
    "ControlCommand": ControlCommand,
    "ControlReply": ControlReply,
    "TradingState": TradingState,
    "SetLimits": SetLimits,
    "LimitsReply": LimitsReply,
    "LimitsEntry": LimitsEntry,
    "SetAccount": SetAccount,
    "AccountReply": AccountReply,
    "Account": Account,
    "OrderDecision": OrderDecision,
    "Fill": Fill,
    "PortfolioSnapshot": PortfolioSnapshot,
    "RiskSnapshot": RiskSnapshot,
    "BreakerEvent": BreakerEvent,
    "ClosePosition": ClosePosition,
    "NewsEvent": NewsEvent,
    "DeadLetter": DeadLetter,
}


def json_schemas() -> dict[str, Any]:
    """Return the JSON Schema of every public message, generated from the Structs."""
    return {name: msgspec.json.schema(type_) for name, type_ in PUBLIC_MESSAGES.items()}


# ---------------------------------------------------------------- deployment (phased capital rollout)
Env = Literal["paper", "live"]
RolloutStatus = Literal[
    "SOAKING",  # in a phase, soak clock running
    "HOLDING",  # a gate is warning or inconclusive: soak clock stopped until a clean evaluation
    "PAUSED",  # operator pause: soak clock stopped, gates still watched (a critical breach still rolls back)
    "READY",  # soak done, gates clean; waits for an operator promote (manual rollouts)
    "AWAITING_APPROVAL",  # soak done; the next phase needs an explicit approval (`promote --full`)
    "COMPLETE",  # the last phase is soaked; gates still watched
    "ROLLED_BACK",  # halted, allocation at the last good phase (or 0); waits for a resume
    "HALTED",  # operator halt; latched until an explicit resume
    "ABORTED",  # terminal: halted, allocation 0
]
GateLevel = Literal["ok", "warning", "critical", "inconclusive"]
ReadingStatus = Literal["ok", "no_data", "stale", "source_failed"]
NO_PHASE = "none"


class DeployCommandBase(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="verb"):
    """A request on `qmp.deploy.<strategy>.cmd`. `expected_phase` is the phase the sender believes is current."""

    command_id: CommandId = ""
    expected_phase: str = ""
    issued_by: str = "operator"
    reason: Reason = ""
    ts_event: int = 0
    schema: int = SCHEMA_VERSION


class Deploy(DeployCommandBase, tag="deploy"):
    """Start a rollout (first phase), or move to the phase matching env/allocation (the next one only)."""

    plan: str = "default"
    env: Literal["paper", "live", ""] = ""
    allocation: Fraction | None = None
    auto: bool = True
    confirm_live: bool = False  # the operator's confirmation that the rollout may enter its first live phase
    account: OptionalToken = ""  # the account the strategy trades from ("": none, no capital check)
    budget: Capital | None = None  # the strategy's capital within its account (default: the account's capital)


class Promote(DeployCommandBase, tag="promote"):
    """Move one phase on; `full` is the explicit approval the last promotion (to 100%) waits for, and
    `confirm_live` the confirmation the first live phase waits for."""

    full: bool = False
    confirm_live: bool = False


class Pause(DeployCommandBase, tag="pause"):
    """Stop the soak clock and promotions; gates keep running."""


class ResumeRollout(DeployCommandBase, tag="resume"):
    """Lift a pause, a halt or a rollback."""

    mode: Literal["safe", "normal"] = "normal"


class Abort(DeployCommandBase, tag="abort"):
    """End the rollout: halt, allocation 0. Takes priority over everything; never clears itself."""


class Rollback(DeployCommandBase, tag="rollback"):
    """Halt and go back to the last good phase (or allocation 0)."""


class HaltRollout(DeployCommandBase, tag="halt"):
    """Halt the strategy and freeze the rollout. Takes priority over everything; never clears itself."""


class GetRolloutStatus(DeployCommandBase, tag="status"):
    """Read-only: reply with the rollout state."""


DeployCommand = Deploy | Promote | Pause | ResumeRollout | Abort | Rollback | HaltRollout | GetRolloutStatus


class RolloutPhase(Struct, frozen=True, kw_only=True):
    """One phase of a rollout, copied from the plan when the rollout starts (a plan edit never moves it)."""

    name: str
    env: Env
    allocation: Fraction
    min_soak_s: float
    min_fills: int = 0
    min_notional_hours: float = 0.0
    approval: bool = False


class GateResult(Struct, frozen=True, kw_only=True):
    """The last evaluation of one monitored metric."""

    metric: str
    level: GateLevel
    value: float | None = None
    warning: float = 0.0
    critical: float = 0.0
    action: str = ""
    reading: ReadingStatus = "ok"
    consecutive_critical: int = 0
    ts_event: int = 0  # of the reading
    detail: str = ""


class DeploymentEvent(Struct, frozen=True, kw_only=True):
    """One entry of the audit trail on `qmp.deploy.<strategy>.events` and in `deployment_events`."""

    strategy: str
    rollout_id: str
    seq: int
    kind: str  # deployed, promoted, held, soak_resumed, rolled_back, halted, aborted, action, alert, ...
    phase_from: str = NO_PHASE
    phase_to: str = NO_PHASE
    status: str = ""
    trigger: str = ""
    actor: str = "deployer"
    command_id: str = ""
    allocation_before: float = 0.0
    allocation_after: float = 0.0
    metrics: dict[str, float | None] = {}
    thresholds: dict[str, list[float]] = {}  # metric -> [warning, critical]
    reason: str = ""
    epoch: int = 0
    ts_event: int = 0
    schema: int = SCHEMA_VERSION
    issued_by: str = ""  # who caused it (operator, deployer, verify); `actor` is its first name, still read and written

    def __post_init__(self) -> None:
        _keep_first_name(self, "issued_by", "actor")



class RolloutState(Struct, frozen=True, kw_only=True):
    """A strategy's rollout, the value of its key in the `qmp_rollouts` KV bucket (written with CAS).

    `outbox_controls` / `outbox_events` are the effects decided with this state and not yet confirmed
    carried out; they are written in the same compare-and-set as the state, so a crash between deciding
    and doing is finished after restart, with the same command ids (applied once).
    """

    strategy: str
    rollout_id: str
    plan: str
    phases: list[RolloutPhase]
    phase_index: int = 0  # -1: below the first phase (rolled back to allocation 0)
    status: RolloutStatus = "SOAKING"
    allocation: float = 0.0  # what the deployer's control entry says now
    defensive: bool = False  # "halt new positions" in force (the deployer's entry)
    # "reduce order size" in force (the deployer's entry); stored under its first name, size_factor
    size_multiplier: float = msgspec.field(default=1.0, name="size_factor")
    auto: bool = True
    approved_full: bool = False
    live_confirmed: bool = False  # an operator confirmed live trading (the first live phase waits for it)
    soak_elapsed_ns: int = 0
    soak_anchor_ns: int = 0  # time of the last soak accrual; 0 = anchor at the next evaluation
    fills: int = 0
    notional_hours: float = 0.0
    phase_started_ns: int = 0
    halted_from: str = ""
    hold_reason: str = ""
    sticky_actions: list[str] = []  # "metric:action" applied in this phase, never re-run in it
    gates: list[GateResult] = []
    last_eval_ns: int = 0
    event_seq: int = 0
    recent_events: list[DeploymentEvent] = []
    recent_commands: list[str] = []
    outbox_controls: list[ControlCommand] = []
    outbox_events: list[DeploymentEvent] = []
    epoch: int = 0
    plan_digest: str = ""
    started_ns: int = 0
    updated_ns: int = 0
    schema: int = SCHEMA_VERSION
    endpoint_backup: bool = False  # the deployer pinned the broker to its backup endpoint (latency breach)
    outbox_endpoint: str = ""  # a broker endpoint choice ("backup" | "auto") decided and not yet sent
    account: str = ""  # the account the strategy trades from ("": none)
    budget: float = 0.0  # the strategy's capital within it: a live phase holds budget × allocation of its capital


class DeployReply(Struct, frozen=True, kw_only=True):
    accepted: bool
    reason: str = ""
    command_id: str = ""
    duplicate: bool = False
    rollout: RolloutState | None = None
    ts_event: int = 0
    schema: int = SCHEMA_VERSION


class DeployerLease(Struct, frozen=True, kw_only=True):
    """Who may act: the holder of the highest epoch whose lease has not expired (wall time)."""

    holder: str
    epoch: int
    expires_ns: int
    ts_event: int = 0
    schema: int = SCHEMA_VERSION


PUBLIC_MESSAGES.update(DeployCommand=DeployCommand, DeployReply=DeployReply, DeploymentEvent=DeploymentEvent,
                       RolloutState=RolloutState)


# ---------------------------------------------------------------- execution: working orders, cancels, broker
class OrderCanceled(OrderDecisionBase, tag="OrderCanceled"):
    """The unfilled rest of a working order withdrawn (halt, reduce-only, a new target, a stopped strategy)."""

    reason: str = ""
    reason_code: str = ""
    filled_quantity: float = 0.0


# Everything execution publishes on `qmp.exec.<strategy>.orders`.
OrderEvent = OrderAccepted | OrderDenied | OrderCanceled


class BatchEvents(Struct, frozen=True, kw_only=True, gc=False):
    """One strategy's order events and fills of one market-data batch, in one message on
    `qmp.exec.<strategy>.batch_events`: what execution publishes in a replay instead of a message per order
    and per fill (`order_events`), in the same order as those would go. Live trading publishes each order
    event and fill on its own subject, for plain clients."""

    strategy: str
    ts_event: int
    decisions: list[OrderEvent] = []
    fills: list[Fill] = []
    schema: int = SCHEMA_VERSION


def execution_events(subject: str, data: bytes) -> tuple[list[OrderEvent], list[Fill]]:
    """The order events and fills in a message execution published: one on `qmp.exec.<strategy>.orders` or
    `.fills`, or a replay's BatchEvents on `.batch_events`; none for its other subjects. Raises msgspec's
    DecodeError or ValidationError on a body it cannot read."""
    kind = subject.rsplit(".", 1)[-1]
    if kind == "orders":
        return [codec(OrderEvent).decode(data)], []
    if kind == "fills":
        return [], [codec(Fill).decode(data)]
    if kind == "batch_events":
        events = codec(BatchEvents).decode(data)
        return events.decisions, events.fills
    return [], []


class WorkingOrder(Struct, frozen=True, kw_only=True):
    """An accepted order not yet completely filled; kept in the PortfolioSnapshot so a restart resumes it."""

    order_id: str
    symbol: str
    side: Side
    quantity: float
    price: float  # arrival price (the close at decision time)
    ts_event: int  # decision time
    filled: float = 0.0
    fills: int = 0
    bars_waited: int = 0
    schema: int = SCHEMA_VERSION
    filled_value: float = 0.0  # Σ quantity × price of the fills booked (0 in books written before paper kept it)
    deployment_id: str = ""  # the rollout it was sent under: its fills carry it after a redeploy too


class StopLossInForce(Struct, frozen=True, kw_only=True):
    """A risk stop-loss whose position is not flat yet; kept in the PortfolioSnapshot so a restart goes on closing."""

    command_id: str  # of the ClosePosition
    symbol: str
    reason: str  # carried by the close order
    ts_event: int  # of the ClosePosition
    order_id: str = ""  # the close order once accepted
    schema: int = SCHEMA_VERSION


class BrokerCommand(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A request on `qmp.broker.<instance>`: pin the broker to an endpoint (or `auto`), ask its status, or
    `check` the venue: its account, and every position where the books and the venue disagree."""

    command: Literal["use_endpoint", "status", "check"] = "status"
    endpoint: Literal["primary", "backup", "auto"] = "auto"
    issued_by: str = "operator"
    command_id: str = ""
    ts_event: int = 0
    schema: int = SCHEMA_VERSION


class PositionDifference(Struct, frozen=True, kw_only=True):
    """A symbol whose position at the venue is not the sum of the books of the strategies trading there."""

    symbol: str
    booked: float
    venue: float


class BrokerReply(Struct, frozen=True, kw_only=True):
    accepted: bool
    reason: str = ""
    active: str = ""  # the endpoint requests go to now
    forced: str = ""  # the endpoint pinned by a command; empty while latency decides
    endpoints: dict[str, dict[str, float]] = {}  # name -> latency_p99_ms, errors, requests, healthy
    ts_event: int = 0
    schema: int = SCHEMA_VERSION
    broker: str = ""  # paper, rest, alpaca
    account: dict[str, float] = {}  # `check`: cash, equity, buying_power, latency_ms of the account call
    differences: list[PositionDifference] = []  # `check`: positions where the books and the venue disagree


class KillReport(Struct, frozen=True, kw_only=True):
    """What a kill did, published by execution on `qmp.exec.<strategy>.kill` once the venue has answered.

    `confirmed` is true when the venue showed no open order of the strategy after the cancels (and, with
    `flatten`, every closing order was taken); `still_open` and `errors` say what was not, and why.
    """

    strategy: str
    kill_id: str  # the Kill command's id
    venue: str  # the broker: paper, rest, alpaca
    canceled: list[str] = []  # order ids withdrawn
    still_open: list[str] = []  # order ids the venue still shows open after the cancels
    flatten_orders: list[str] = []  # the closing orders sent (flatten)
    errors: list[str] = []
    confirmed: bool = False
    elapsed_ms: float = 0.0  # from the kill reaching execution to the venue's confirmation
    ts_event: int = 0
    schema: int = SCHEMA_VERSION


AlertLevel = Literal["info", "warning", "critical"]


class Alert(Struct, frozen=True, kw_only=True):
    """An alert to people, on `qmp.alert.<strategy>` (kept in the audit stream): a breaker that tripped, a
    halt and a resume, a gate of the monitoring table crossing its warning or critical level and clearing, a
    rollout rolled back, a failed verification. `key` names what it is about (one alert per key per quiet
    window); `held_back` counts the alerts of that key not sent in the window before it."""

    strategy: str
    level: AlertLevel
    title: str
    body: str = ""
    key: str = ""
    held_back: int = 0
    ts_event: int = 0  # when it was raised (wall clock, ns)
    schema: int = SCHEMA_VERSION


class HaltRequest(Struct, frozen=True, kw_only=True):
    """Execution asks for its strategy to be halted (it may not write control state itself), on
    `qmp.exec.<strategy>.halt_request`: the deployer halts it, latched and audited, until a person resumes.
    Sent when the repeated-execution throttle trips; the strategy trades as halted from then on."""

    strategy: str
    reason: str
    reason_code: str = ""
    ts_event: int = 0
    schema: int = SCHEMA_VERSION


ReconciliationPolicy = Literal["halt", "adopt", "report"]


class ReconciliationReport(Struct, frozen=True, kw_only=True):
    """Execution's books against the venue's account, published on `qmp.exec.<strategy>.reconciliation` when
    they disagree (and once at start): every position difference, and what the configured policy did.

    `adopt`: a difference the strategy's book can take (one strategy holds the symbol, or it is the only one
    on the account, and the symbol has a price) is booked at the last price (`adopted`), and an open order of
    the strategy's the books do not know becomes a working order (`adopted_orders`: what it filled is then
    booked from the venue's answer, once); what cannot be adopted falls back to halt. `halt`: the deployer
    halts the strategy (latched, audited) until a person resumes it. `report`: nothing is changed. `action`
    says what happened to this strategy.
    """

    strategy: str
    venue: str  # the broker: rest, alpaca, an exchange's ccxt id
    differences: list[PositionDifference] = []
    adopted: list[PositionDifference] = []
    policy: ReconciliationPolicy = "halt"
    action: Literal["clean", "adopted", "halt", "reported"] = "clean"
    reason: str = ""
    ts_event: int = 0
    schema: int = SCHEMA_VERSION
    # Open orders at the venue under the strategy's ids that its books do not know (sent before a crash
    # and never recorded, or placed by hand), and those of them taken into the book as working orders.
    unknown_orders: list[str] = []
    adopted_orders: list[str] = []


PUBLIC_MESSAGES.update(OrderEvent=OrderEvent, BrokerCommand=BrokerCommand, BrokerReply=BrokerReply,
                       KillReport=KillReport, ReconciliationReport=ReconciliationReport, HaltRequest=HaltRequest)
