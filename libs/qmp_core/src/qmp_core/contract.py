"""The public bus contract as data: which subject carries which message, who publishes it, and how.

`docs/CONTRACT.md` is rendered from this table and from the JSON Schemas msgspec generates from the
message Structs (`qmp contract --write` regenerates it; a test fails when the file and the code differ).
A client in any language needs nothing else to talk to QMP.
"""

import json
from dataclasses import dataclass
from typing import Any

import msgspec

from qmp_core import subjects
from qmp_core.messages import (
    PUBLIC_MESSAGES,
    AccountChanged,
    Alert,
    BatchEvents,
    ControlApplied,
    HealthReply,
    LimitsChanged,
)

# Every message a client can meet on a public subject or in a public KV bucket.
# OrderDecision (accepted | denied) is left out: the orders subject carries OrderEvent, which adds cancels.
CONTRACT_MESSAGES: dict[str, Any] = {
    **{name: type_ for name, type_ in PUBLIC_MESSAGES.items() if name != "OrderDecision"},
    "ControlApplied": ControlApplied,
    "LimitsChanged": LimitsChanged,
    "AccountChanged": AccountChanged,
    "Alert": Alert,
    "BatchEvents": BatchEvents,
    "HealthReply": HealthReply,
}


@dataclass(frozen=True)
class Channel:
    subject: str  # `<strategy>`, `<venue>`, `<service>` stand for one token
    message: str  # a key of CONTRACT_MESSAGES
    publishers: str
    delivery: str  # "stream <name>" (JetStream, durable) or "request/reply" (core NATS)
    note: str = ""


def _stream(name: str) -> str:
    return f"stream {name}"


CHANNELS: tuple[Channel, ...] = (
    Channel("qmp.md.<venue>.bars", "BarBatch", "collector", _stream(subjects.STREAM_MARKET_DATA),
            "one timestamp's bars as columns; a large universe in chunks (`chunk` of `chunks`)"),
    Channel("qmp.ingest.<venue>", "BarBatch", "external feeds", _stream(subjects.STREAM_INGEST),
            "validated by the collector, then published on qmp.md.<venue>.bars"),
    Channel(subjects.NEWS_EVENTS, "NewsEvent", "operator, feeds", _stream(subjects.STREAM_MARKET_DATA),
            "high-impact windows make a strategy defensive"),
    Channel("qmp.exec.<strategy>.orders", "OrderEvent", "execution", _stream(subjects.STREAM_EXEC),
            "OrderAccepted / OrderDenied (with `reason_code`) / OrderCanceled"),
    Channel("qmp.exec.<strategy>.fills", "Fill", "execution", _stream(subjects.STREAM_EXEC)),
    Channel("qmp.exec.<strategy>.batch_events", "BatchEvents", "execution", _stream(subjects.STREAM_EXEC),
            "instead of the two above when execution runs with `order_events = per_batch` (the demo and "
            "verification replays): one batch's order events and fills in one message, in the same order"),
    Channel("qmp.exec.<strategy>.portfolio", "PortfolioSnapshot", "execution", _stream(subjects.STREAM_EXEC),
            "after every batch; a restart recovers the book from the last one"),
    Channel("qmp.exec.<strategy>.kill", "KillReport", "execution", _stream(subjects.STREAM_EXEC),
            "what a kill did at the venue: orders withdrawn, still open, the closing orders"),
    Channel("qmp.exec.<strategy>.reconciliation", "ReconciliationReport", "execution",
            _stream(subjects.STREAM_EXEC), "the books against the venue's account: differences, the policy's action"),
    Channel("qmp.exec.<strategy>.halt_request", "HaltRequest", "execution", _stream(subjects.STREAM_EXEC),
            "execution asks the deployer to halt the strategy (the repeated-execution throttle)"),
    Channel("qmp.risk.<strategy>.snapshot", "RiskSnapshot", "risk", _stream(subjects.STREAM_RISK)),
    Channel("qmp.risk.<strategy>.breaker", "BreakerEvent", "risk", _stream(subjects.STREAM_RISK)),
    Channel("qmp.risk.<strategy>.stoploss", "ClosePosition", "risk", _stream(subjects.STREAM_RISK),
            "execution closes the position once per `command_id`"),
    Channel("qmp.control.<sender>.<strategy>", "ControlCommand", "operators, risk, deployer", "request/reply",
            "`<sender>` = the sender's NATS user, the only one it may publish to (risk and the deployer write "
            "their own entries, any other sender the operators'); `<strategy>` = `ALL` for every strategy; "
            "the reply is a ControlReply"),
    Channel("qmp.control.<sender>.<strategy>", "ControlReply", "deployer", "request/reply",
            "the reply to a command"),
    Channel("qmp.control.<sender>.<strategy>.urgent", "ControlCommand", "operators, risk", "request/reply",
            "halts' own lane (`halt` only; any other command there is refused): answered ahead of every other "
            "control request, on a connection and a worker of their own in the deployer; the reply is a "
            "ControlReply"),
    Channel("<strategy>.<source>", "TradingState", "deployer", f"KV {subjects.KV_CONTROL}",
            "one entry per source (operator, risk, deployer); the effective state is the most restrictive"),
    Channel("qmp.state.<strategy>", "TradingState", "deployer", "core publish",
            "the effective state after every change"),
    Channel("qmp.audit.control.<strategy>", "ControlApplied", "deployer", _stream(subjects.STREAM_AUDIT),
            "every accepted control command with the state it produced"),
    Channel("qmp.limits.<sender>.<strategy>", "SetLimits", "operators", "request/reply",
            "the strategy's pre-trade limits become these (`<strategy>` = `ALL`: every strategy's, under its own); "
            "the reply is a LimitsReply"),
    Channel("qmp.limits.<sender>.<strategy>", "LimitsReply", "deployer", "request/reply", "the reply to a request"),
    Channel("<strategy>", "LimitsEntry", "deployer", f"KV {subjects.KV_LIMITS}",
            "a strategy's pre-trade limits (or `ALL`'s), with who set them; execution trades under them"),
    Channel("qmp.audit.limits.<strategy>", "LimitsChanged", "deployer", _stream(subjects.STREAM_AUDIT),
            "every change of a strategy's limits: before, after, who"),
    Channel("qmp.accounts.<sender>.<account>", "SetAccount", "operators", "request/reply",
            "the account becomes this (venue, currency, capital), or is removed; the reply is an AccountReply"),
    Channel("qmp.accounts.<sender>.<account>", "AccountReply", "deployer", "request/reply", "the reply to a request"),
    Channel("<account>", "Account", "deployer", f"KV {subjects.KV_ACCOUNTS}",
            "an account: its venue, base currency and the capital its strategies' live allocations share"),
    Channel("qmp.audit.accounts.<account>", "AccountChanged", "deployer", _stream(subjects.STREAM_AUDIT),
            "every account added, changed or removed: before, after, who"),
    Channel("qmp.deploy.<strategy>.cmd", "DeployCommand", "operator", "request/reply",
            "the reply is a DeployReply"),
    Channel("qmp.deploy.<strategy>.cmd", "DeployReply", "deployer", "request/reply", "the reply to a command"),
    Channel("rollout.<strategy>", "RolloutState", "deployer", f"KV {subjects.KV_ROLLOUTS}",
            "the rollout's phase, soak and gates"),
    Channel("qmp.deploy.<strategy>.events", "DeploymentEvent", "deployer", _stream(subjects.STREAM_DEPLOY),
            "the rollout's audit trail"),
    Channel("qmp.alert.<strategy>", "Alert", "deployer", _stream(subjects.STREAM_AUDIT),
            "alerts to people (breakers, halts, gates crossing their levels and clearing, rollbacks, failed "
            "verifications), rate-limited per key; `qmp alerts` prints them"),
    Channel("qmp.dlq.<service>", "DeadLetter", "every service", _stream(subjects.STREAM_DLQ),
            "rejected input with the reason"),
    Channel("qmp.health.<service>", "HealthReply", "every service", "request/reply"),
    Channel("qmp.broker.<instance>", "BrokerCommand", "operator", "request/reply",
            "pin a broker endpoint or ask its status; the reply is a BrokerReply"),
    Channel("qmp.broker.<instance>", "BrokerReply", "execution", "request/reply", "the reply to a command"),
)

PLACEHOLDERS = {"<strategy>": "vol_target", "<venue>": "sp500", "<service>": "risk", "<source>": "operator",
                "<instance>": "execution", "<sender>": "alice"}


def example_subject(pattern: str) -> str:
    """Return the pattern with each placeholder replaced by an example token."""
    for placeholder, token in PLACEHOLDERS.items():
        pattern = pattern.replace(placeholder, token)
    return pattern


def render() -> str:
    """Return docs/CONTRACT.md: the channel table, then each message's JSON Schema."""
    lines = [
        "# The bus contract",
        "",
        "Generated from `qmp_core.contract` and the message Structs by `qmp contract --write`; a test fails",
        "when this file and the code differ. Every message is JSON (msgspec; bars also in a binary form, below),",
        "carries `ts_event` (int nanoseconds, event time) where it is an event, and a `schema` version. Fields are",
        "only ever added, with defaults; a field never changes meaning. A `<placeholder>` stands for one subject",
        "token: letters, digits, `_` and `-`. KV rows name the bucket and the key instead of a subject.",
        "",
        "Content-Type: a message without the header is JSON. The collector publishes bars in their binary form,",
        "`Content-Type: application/vnd.qmp.bars+msgpack`: a MessagePack array of BarBatch's fields in their",
        "order (venue, ts_event, symbols, open, high, low, close, volume, seq, chunk, chunks, ts_init, schema),",
        "each price and volume column as the bytes of little-endian float64s, checked by the same rules as the",
        "JSON. Its first byte is 0x9d, never `{`, so a reader that ignores headers can tell the two apart.",
        "`qmp.ingest.<venue>` takes either form.",
        "",
        "| subject | message | published by | delivery | note |",
        "|---|---|---|---|---|",
    ]
    for channel in CHANNELS:
        lines.append(f"| `{channel.subject}` | [{channel.message}](#{channel.message.lower()}) | "
                     f"{channel.publishers} | {channel.delivery} | {channel.note} |")
    lines += ["", "## Messages", "",
              "Each message's schema; the types they share are under [Definitions](#definitions).", ""]
    names = list(CONTRACT_MESSAGES)
    schemas, definitions = msgspec.json.schema_components(list(CONTRACT_MESSAGES.values()),
                                                          ref_template="#/$defs/{name}")
    shown: set[str] = set()
    for name, schema in zip(names, schemas, strict=True):
        ref = schema.get("$ref", "").removeprefix("#/$defs/")
        if ref in definitions and len(schema) == 1:  # a Struct: show its fields here rather than a reference
            schema = definitions[ref]
            shown.add(ref)
        lines += [f"### {name}", "", "```json", json.dumps(schema, indent=2, sort_keys=True), "```", ""]
    lines += ["## Definitions", ""]
    for name in sorted(set(definitions) - shown):
        lines += [f"### $defs/{name}", "", "```json", json.dumps(definitions[name], indent=2, sort_keys=True),
                  "```", ""]
    return "\n".join(lines)
