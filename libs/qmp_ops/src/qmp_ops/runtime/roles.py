"""Who may do what on the bus: one table of roles, rendered into nats-server permissions.

The embedded stack (`qmp up`), `infra/nats/server.conf` and the security tests all take their
permissions from `ROLES`. Only the admin identity (`operator`, which `qmp up` and `qmp init` use) may
create, change or delete a stream or a bucket; a service may:
- publish its own subjects, and subscribe to what it reads;
- consume from its own durable consumers, by exact name, and create them (never another's);
- read the stored messages of the streams it needs (stream info, message and direct gets: no consumer);
- open ephemeral consumers (KV watches, ordered reads) only on `watches` streams, where no other role
  has a durable: the consumer-create API would let it change any consumer of the stream by name;
- write KV entries only in the buckets it owns.

`$JS.API.>` is granted to the admin alone. What each grant is for: docs/SECURITY.md.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from qmp_core import subjects
from qmp_core.bus import DECLARED

ADMIN = "operator"
INBOX = "_INBOX.>"
KV_CONTROL_STREAM = f"KV_{subjects.KV_CONTROL}"
KV_ROLLOUTS_STREAM = f"KV_{subjects.KV_ROLLOUTS}"
KV_LIMITS_STREAM = f"KV_{subjects.KV_LIMITS}"
KV_ACCOUNTS_STREAM = f"KV_{subjects.KV_ACCOUNTS}"
DurableNames = Literal["exact", "any"]


def control_of(sender: str) -> str:
    """The control subjects `sender` may publish: its own, so the deployer knows who sent each command."""
    return subjects.control(">", sender)


def limits_of(sender: str) -> str:
    """The limits requests an operator may send: under their own name, as for control."""
    return subjects.limits(">", sender)


def accounts_of(sender: str) -> str:
    """The account requests an operator may send: under their own name, as for control."""
    return subjects.accounts(">", sender)


@dataclass(frozen=True)
class Role:
    """What one identity may do: its subjects, its durable consumers, the streams it reads."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    durables: tuple[tuple[str, str], ...] = ()  # (stream, durable consumer) it consumes from
    reads: tuple[str, ...] = ()  # streams whose stored messages it reads
    watches: tuple[str, ...] = ()  # streams it may open ephemeral consumers on
    buckets: tuple[str, ...] = ()  # KV buckets it writes
    deny_publish: tuple[str, ...] = ()
    admin: bool = False


ROLES: dict[str, Role] = {
    ADMIN: Role(
        publish=(control_of(ADMIN), limits_of(ADMIN), accounts_of(ADMIN), "qmp.deploy.>", "qmp.ingest.>",
                 "qmp.health.>", "qmp.broker.>", "$JS.API.>", "$JS.ACK.>",
                 # `qmp backup` / `qmp restore`: a stream snapshot's acknowledgements, a restore's chunks.
                 "$JS.SNAPSHOT.ACK.>", "$JS.SNAPSHOT.RESTORE.>", INBOX),
        subscribe=(">",),
        admin=True,
    ),
    "collector": Role(
        # Health requests to risk and execution: a replay's lockstep waits on for them while they wait on a
        # dependency (a database outage), rather than go on without them.
        publish=("qmp.md.>", subjects.dlq("collector"), subjects.health("risk"), subjects.health("execution")),
        subscribe=("qmp.ingest.>", subjects.health("collector"), subjects.SNAPSHOT_ALL),
        durables=((subjects.STREAM_INGEST, subjects.CONSUMER_COLLECTOR_INGEST),),
        reads=(subjects.STREAM_MARKET_DATA, subjects.STREAM_RISK),
    ),
    "risk": Role(
        publish=("qmp.risk.>", control_of("risk"), subjects.dlq("risk")),
        subscribe=("qmp.md.>", "qmp.exec.>", "qmp.state.>", subjects.health("risk")),
        durables=((subjects.STREAM_MARKET_DATA, "risk-bars"), (subjects.STREAM_EXEC, "risk-portfolio"),
                  (subjects.STREAM_MARKET_DATA, "risk-news")),
        reads=(subjects.STREAM_MARKET_DATA, subjects.STREAM_EXEC),
        # The accounts and the rollouts that name them: the account breaker's members and capital.
        watches=(KV_CONTROL_STREAM, KV_ROLLOUTS_STREAM, KV_ACCOUNTS_STREAM),
    ),
    "execution": Role(
        publish=("qmp.exec.>", subjects.dlq("execution")),
        deny_publish=("qmp.control.>",),
        subscribe=("qmp.md.>", "qmp.state.>", subjects.health("execution"), "qmp.broker.>"),
        durables=((subjects.STREAM_MARKET_DATA, subjects.CONSUMER_EXECUTION_BARS),
                  (subjects.STREAM_RISK, subjects.CONSUMER_EXECUTION_STOP_LOSS)),
        reads=(subjects.STREAM_EXEC, subjects.STREAM_MARKET_DATA),
        watches=(KV_CONTROL_STREAM, KV_LIMITS_STREAM, KV_ROLLOUTS_STREAM, subjects.STREAM_RISK),
    ),
    "deployer": Role(
        publish=("qmp.state.>", "qmp.audit.>", "qmp.alert.>", "qmp.deploy.>", control_of("deployer"),
                 subjects.dlq("deployer"), subjects.health("execution"), subjects.health("risk"),
                 subjects.health("collector"), "qmp.broker.*"),
        # qmp.state.>: its own published states, read back by the alerter (halts and resumes to people).
        subscribe=("qmp.control.>", "qmp.limits.>", "qmp.accounts.>", "qmp.deploy.>", "qmp.risk.>", "qmp.exec.*.fills",
                   subjects.BATCH_EVENTS_ALL,
                   "qmp.exec.*.portfolio", subjects.RECONCILIATION_ALL, subjects.HALT_REQUESTS_ALL, subjects.STATE_ALL,
                   subjects.health("deployer")),
        watches=(KV_CONTROL_STREAM, KV_ROLLOUTS_STREAM, KV_LIMITS_STREAM, KV_ACCOUNTS_STREAM, subjects.STREAM_AUDIT),
        buckets=(subjects.KV_CONTROL, subjects.KV_ROLLOUTS, subjects.KV_LIMITS, subjects.KV_ACCOUNTS),
    ),
}


# Streams an operator's tools read with ephemeral consumers (status, history): none holds a durable.
OPERATOR_WATCHES = (KV_CONTROL_STREAM, KV_ROLLOUTS_STREAM, KV_LIMITS_STREAM, KV_ACCOUNTS_STREAM, subjects.STREAM_AUDIT,
                    subjects.STREAM_DEPLOY, subjects.STREAM_DLQ)


def operator(name: str) -> Role:
    """A named operator (a person): control under their own name, deploy verbs, health; reads everything."""
    if name in ROLES:
        raise ValueError(f"operator name {name!r} is taken by a role")
    subjects.check_token(name, "operator name")
    return Role(
        publish=(control_of(name), limits_of(name), accounts_of(name), "qmp.deploy.>", "qmp.health.>", "qmp.broker.>"),
        subscribe=(">",),
        reads=tuple(name for name in DECLARED if not name.startswith("KV_")),
        watches=OPERATOR_WATCHES,
    )


def roles_with(operators: Iterable[str] = ()) -> dict[str, Role]:
    """Return the role table with a role for each named operator."""
    roles = dict(ROLES)
    for name in operators:
        roles[name] = operator(name)
    check(roles)
    return roles


def check(roles: dict[str, Role]) -> None:
    """Refuse a table where a role may open consumers on a stream another role holds a durable on."""
    for name, role in roles.items():
        for stream in role.watches:
            owners = {other for other, r in roles.items() if other != name
                      for durable_stream, _ in r.durables if durable_stream == stream}
            if owners:
                raise ValueError(f"{name} may open consumers on {stream}, where {sorted(owners)} hold durables: "
                                 "it could change them by name")


def jetstream_grants(role: Role, durable_names: DurableNames = "exact") -> list[str]:
    """Return the JetStream API and ack subjects `role` may publish to.

    `durable_names="any"` grants the durable-consumer subjects for any consumer name on the role's
    streams: for a shared test server where each test names its own consumers, never for a stack.
    """
    if role.admin:
        return []
    # Any stream's info (limits, counts), read-only: a service checks at start that the streams exist.
    grants = ["$JS.API.INFO", "$JS.API.STREAM.NAMES", *(f"$JS.API.STREAM.INFO.{name}" for name in DECLARED)]
    for stream, durable in role.durables:
        name = durable if durable_names == "exact" else "*"
        grants += [f"$JS.API.CONSUMER.INFO.{stream}.{name}", f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
                   f"$JS.API.CONSUMER.CREATE.{stream}.{name}", f"$JS.API.CONSUMER.CREATE.{stream}.{name}.>",
                   f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}", f"$JS.ACK.{stream}.{name}.>"]
    for stream in _unique([s for s, _ in role.durables] + list(role.reads) + list(role.watches)):
        grants += [f"$JS.API.STREAM.MSG.GET.{stream}",
                   f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>"]
    for stream in role.watches:  # ephemeral consumers: unnamed (ordered, KV watch) or a generated name (pull)
        grants += [f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}.*",
                   f"$JS.API.CONSUMER.CREATE.{stream}.*.>", f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",
                   f"$JS.API.CONSUMER.INFO.{stream}.*"]
    grants += [f"$KV.{bucket}.>" for bucket in role.buckets]
    return _unique(grants)


def permissions(role: Role, durable_names: DurableNames = "exact") -> dict[str, object]:
    """Return the role's nats-server `permissions` block."""
    publish: dict[str, list[str]] = {"allow": [*role.publish, *jetstream_grants(role, durable_names), INBOX]}
    if role.deny_publish:
        publish["deny"] = list(role.deny_publish)
    return {"publish": publish, "subscribe": {"allow": _unique([*role.subscribe, INBOX])}, "allow_responses": True}


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


check(ROLES)
