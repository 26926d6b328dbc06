"""Every subject, stream, consumer and KV bucket name on the bus. Nowhere else.

Strategy and venue ids are NATS tokens: letters, digits, `_` and `-` (no dots or wildcards), so that
they can stand in a subject and in a KV key.
"""

import re

ALL_STRATEGIES = "ALL"
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Market data
MARKET_DATA_ALL = "qmp.md.>"
MARKET_DATA_BARS_ALL = "qmp.md.*.bars"

# Execution
EXEC_ALL = "qmp.exec.>"
ORDERS_ALL = "qmp.exec.*.orders"
FILLS_ALL = "qmp.exec.*.fills"
BATCH_EVENTS_ALL = "qmp.exec.*.batch_events"  # a replay's orders and fills, one message per strategy and batch
PORTFOLIO_ALL = "qmp.exec.*.portfolio"
RECONCILIATION_ALL = "qmp.exec.*.reconciliation"
HALT_REQUESTS_ALL = "qmp.exec.*.halt_request"

# Risk
RISK_ALL = "qmp.risk.>"
SNAPSHOT_ALL = "qmp.risk.*.snapshot"
BREAKER_EVENTS_ALL = "qmp.risk.*.breaker"
STOP_LOSS_ALL = "qmp.risk.*.stoploss"

# News calendar entries (NewsEvent): market data, so they live in the market-data stream
NEWS_EVENTS = "qmp.md.news.events"

# Control: requests answered by the owner of control state; accepted ones are journaled in the audit stream
CONTROL_ALL = "qmp.control.>"
CONTROL_ANY = "qmp.control.*.*"  # qmp.control.<sender>.<strategy>
# Halts' own lane, qmp.control.<sender>.<strategy>.urgent: the deployer answers it on a connection and a
# worker of its own, so a halt never waits behind a burst of other requests (the same publish permission).
URGENT = "urgent"
CONTROL_URGENT_ANY = f"qmp.control.*.*.{URGENT}"
STATE_ALL = "qmp.state.>"
AUDIT_ALL = "qmp.audit.>"
ALERTS_ALL = "qmp.alert.*"  # qmp.alert.<strategy>: alerts to people, kept in the audit stream
# Pre-trade limits: an operator's request qmp.limits.<sender>.<strategy>, answered by the deployer
LIMITS_ANY = "qmp.limits.*.*"
# Accounts: an operator's request qmp.accounts.<sender>.<account>, answered by the deployer
ACCOUNTS_ANY = "qmp.accounts.*.*"

# Deployment
DEPLOY_COMMANDS_ALL = "qmp.deploy.*.cmd"
DEPLOY_EVENTS_ALL = "qmp.deploy.*.events"

# Dead letters and health
DLQ_ALL = "qmp.dlq.>"
HEALTH_ALL = "qmp.health.>"
INGEST_ALL = "qmp.ingest.>"

# Streams (JetStream, file storage)
STREAM_MARKET_DATA = "QMP_MARKET_DATA"
STREAM_EXEC = "QMP_EXEC"
STREAM_RISK = "QMP_RISK"
STREAM_AUDIT = "QMP_AUDIT"
STREAM_DEPLOY = "QMP_DEPLOY"
STREAM_DLQ = "QMP_DLQ"
STREAM_INGEST = "QMP_INGEST"

# KV buckets
KV_CONTROL = "qmp_control"
KV_LIMITS = "qmp_limits"  # key: the strategy, or ALL; value: LimitsEntry
KV_ACCOUNTS = "qmp_accounts"  # key: the account; value: Account

# Durable consumers
CONSUMER_EXECUTION_BARS = "execution-bars"
CONSUMER_EXECUTION_STOP_LOSS = "execution-stoploss"
CONSUMER_COLLECTOR_INGEST = "collector-ingest"


def check_token(value: str, what: str = "id") -> str:
    """Return value if it is a valid subject token, else raise ValueError saying what was expected."""
    if not TOKEN_PATTERN.match(value):
        raise ValueError(f"{what} must match {TOKEN_PATTERN.pattern}, got {value!r}")
    return value


def bars(venue: str) -> str:
    return f"qmp.md.{venue}.bars"


def ingest(venue: str) -> str:
    return f"qmp.ingest.{venue}"


def orders(strategy: str) -> str:
    return f"qmp.exec.{strategy}.orders"


def fills(strategy: str) -> str:
    return f"qmp.exec.{strategy}.fills"


def batch_events(strategy: str) -> str:
    return f"qmp.exec.{strategy}.batch_events"


def portfolio(strategy: str) -> str:
    return f"qmp.exec.{strategy}.portfolio"


def kill_reports(strategy: str) -> str:
    """Where execution reports what a kill did (KillReport); `*` for every strategy."""
    return f"qmp.exec.{strategy}.kill"


def halt_requests(strategy: str) -> str:
    """Where execution asks the deployer to halt a strategy (HaltRequest); `*` for every strategy."""
    return f"qmp.exec.{strategy}.halt_request"


def reconciliation_reports(strategy: str) -> str:
    """Where execution reports its books against the venue (ReconciliationReport); `*` for every strategy."""
    return f"qmp.exec.{strategy}.reconciliation"


def snapshot(strategy: str) -> str:
    return f"qmp.risk.{strategy}.snapshot"


def breaker_events(strategy: str) -> str:
    return f"qmp.risk.{strategy}.breaker"


def stop_loss(strategy: str) -> str:
    return f"qmp.risk.{strategy}.stoploss"


def control(strategy: str, sender: str = "operator", urgent: bool = False) -> str:
    """Return where `sender` (its NATS user) sends control commands for `strategy`; `urgent`: halts' lane.

    The sender is part of the subject, and each identity may publish only under its own name, so who
    sent a command is what the server authenticated, never a field the sender fills in.
    """
    return f"qmp.control.{sender}.{strategy}" + (f".{URGENT}" if urgent else "")


def control_sender_and_strategy(subject: str) -> tuple[str, str]:
    """Return (sender, strategy) of a subject qmp.control.<sender>.<strategy>[.urgent]."""
    tokens = subject.split(".")
    if len(tokens) == 5 and tokens[4] == URGENT:
        tokens = tokens[:4]
    if len(tokens) != 4 or tokens[:2] != ["qmp", "control"]:
        raise ValueError(f"not a control subject qmp.control.<sender>.<strategy>: {subject!r}")
    return tokens[2], tokens[3]


def is_urgent(subject: str) -> bool:
    """Whether a control subject is halts' lane (qmp.control.<sender>.<strategy>.urgent)."""
    tokens = subject.split(".")
    return len(tokens) == 5 and tokens[4] == URGENT  # a strategy named "urgent" on the main lane is not


def limits(strategy: str, sender: str = "operator") -> str:
    """Return where `sender` (its NATS user) asks for `strategy`'s pre-trade limits to change (as for control,
    the sender is the subject's, authenticated by the server)."""
    return f"qmp.limits.{sender}.{strategy}"


def limits_sender_and_strategy(subject: str) -> tuple[str, str]:
    """Return (sender, strategy) of a subject qmp.limits.<sender>.<strategy>."""
    tokens = subject.split(".")
    if len(tokens) != 4 or tokens[:2] != ["qmp", "limits"]:
        raise ValueError(f"not a limits subject qmp.limits.<sender>.<strategy>: {subject!r}")
    return tokens[2], tokens[3]


def audit_limits(strategy: str) -> str:
    return f"qmp.audit.limits.{strategy}"


def accounts(account: str, sender: str = "operator") -> str:
    """Return where `sender` (its NATS user) asks for `account` to be added, changed or removed (the sender is
    the subject's, authenticated by the server, as for control)."""
    return f"qmp.accounts.{sender}.{account}"


def accounts_sender_and_account(subject: str) -> tuple[str, str]:
    """Return (sender, account) of a subject qmp.accounts.<sender>.<account>."""
    tokens = subject.split(".")
    if len(tokens) != 4 or tokens[:2] != ["qmp", "accounts"]:
        raise ValueError(f"not an accounts subject qmp.accounts.<sender>.<account>: {subject!r}")
    return tokens[2], tokens[3]


def audit_accounts(account: str) -> str:
    return f"qmp.audit.accounts.{account}"


def state(strategy: str) -> str:
    return f"qmp.state.{strategy}"


def alert(strategy: str) -> str:
    return f"qmp.alert.{strategy}"


def audit_control(strategy: str) -> str:
    return f"qmp.audit.control.{strategy}"


def deploy_commands(strategy: str) -> str:
    return f"qmp.deploy.{strategy}.cmd"


def deploy_strategy(subject: str) -> str:
    """Return the strategy of a subject qmp.deploy.<strategy>.cmd; ValueError for any other shape."""
    tokens = subject.split(".")
    if len(tokens) != 4 or tokens[:2] != ["qmp", "deploy"] or tokens[3] != "cmd":
        raise ValueError(f"not a deploy subject qmp.deploy.<strategy>.cmd: {subject!r}")
    return tokens[2]


def deploy_events(strategy: str) -> str:
    return f"qmp.deploy.{strategy}.events"


def dlq(service: str) -> str:
    return f"qmp.dlq.{service}"


def health(service: str) -> str:
    return f"qmp.health.{service}"


def control_key(strategy: str, source: str) -> str:
    """KV key of one source's entry (operator, risk, deployer) in the control bucket."""
    return f"{strategy}.{source}"


def strategy_of(subject: str, position: int = 2) -> str:
    """Return the strategy token of a subject such as qmp.control.<strategy>."""
    return subject.split(".")[position]


# Deployment: rollout state per strategy and the deployers' lease in one KV bucket. Rollout keys carry a
# dot, strategy tokens never do, so no strategy id can collide with the lease key.
KV_ROLLOUTS = "qmp_rollouts"
ROLLOUT_LEASE_KEY = "lease.deployer"
DEPLOY_QUEUE = "qmp-deployer"  # queue group: one deployer instance answers each request


def rollout_key(strategy: str) -> str:
    """KV key of a strategy's rollout state in the rollouts bucket."""
    return f"rollout.{strategy}"


# Broker adapter control (core request/reply, no stream): `qmp.broker.<execution instance>`.
BROKER_ALL = "qmp.broker.>"
DEFAULT_EXECUTION_INSTANCE = "execution"


def broker(instance: str = DEFAULT_EXECUTION_INSTANCE) -> str:
    """Subject of an execution instance's broker commands (pin an endpoint, status)."""
    return f"qmp.broker.{instance}"
