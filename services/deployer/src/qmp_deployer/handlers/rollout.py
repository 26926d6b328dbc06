"""Rollouts: deploy commands, gate evaluations, the lease, the rollouts bucket and the audit trail.

Order of effects for one decision, fixed so that a crash at any point is finished after restart and
nothing is done twice:
1. the engine returns the next state with its effects in the outbox (control commands with deterministic
   ids, audit events with a per-rollout sequence);
2. that state is written to KV with compare-and-set on the revision the decision was made from;
3. the control commands go through the control handler in-process (deduplicated by command id), the
   events to the `QMP_DEPLOY` stream (`Nats-Msg-Id` = strategy:rollout:seq) and the `deployment_events` table
   (unique key); 4. the state is written again with an empty outbox.
A restart (or a new leader) reloads the states, re-anchors their soak clocks and carries out whatever
outbox is left.

Two instances never both act: only the holder of the lease (a KV key with an epoch, the fencing token)
subscribes to commands and evaluates gates, every state it writes carries its epoch, and a write whose
revision moved (another writer) or whose stored epoch is newer makes it stop acting.
"""

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from qmp_core import bus, subjects
from qmp_core.clock import NS_PER_SECOND, Clock, ReplayClock
from qmp_core.messages import (
    Account,
    BatchEvents,
    BrokerCommand,
    BrokerReply,
    DeployCommand,
    DeployerLease,
    DeploymentEvent,
    DeployReply,
    Fill,
    PortfolioSnapshot,
    RiskSnapshot,
    RolloutState,
    codec,
    encode,
)
from qmp_core.service import Intake
from qmp_core.telemetry import tracer
from qmp_deployer.engine.gates import Monitor, Reading
from qmp_deployer.engine.plan import PROBE_SOURCES, Plan
from qmp_deployer.engine.rollout import (
    Context,
    Outcome,
    clear_outbox,
    evaluate,
    handle_command,
    has_outbox,
    is_active,
    is_due,
    record_fill,
    restore,
)
from qmp_deployer.handlers.control import SERVICE, ControlHandler
from qmp_deployer.handlers.probes import Probes
from qmp_deployer.store import command_seen, write_deployment_event

log = logging.getLogger(__name__)
_tracer = tracer(__name__)
CAS_ATTEMPTS = 5
BROKER_TIMEOUT_S = 2.0
LEASE_SAFETY = 0.25  # the leader stops acting this fraction of the TTL before a standby may take over




def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class RolloutStore:
    """Rollout states in the `qmp_rollouts` bucket, one key per strategy, written only with CAS."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self._decoder = codec(RolloutState)

    async def load_all(self) -> dict[str, tuple[RolloutState, int]]:
        try:
            keys = await self.kv.keys()
        except NoKeysError:
            keys = []
        states: dict[str, tuple[RolloutState, int]] = {}
        prefix = subjects.rollout_key("")
        for key in keys:
            if key.startswith(prefix):
                state, revision = await self.get(key[len(prefix):])
                if state is not None:
                    states[state.strategy] = (state, revision)
        return states

    async def states(self) -> dict[str, RolloutState]:
        """Every strategy's rollout as stored now."""
        return {strategy: state for strategy, (state, _) in (await self.load_all()).items()}

    async def get(self, strategy: str) -> tuple[RolloutState | None, int]:
        try:
            entry = await self.kv.get(subjects.rollout_key(strategy))
        except KeyNotFoundError:
            return None, 0
        if not entry.value:
            return None, entry.revision or 0
        try:
            return self._decoder.decode(entry.value), entry.revision or 0
        except msgspec.DecodeError as error:
            # Nobody but a deployer should write here; one bad entry must not stop the deployer from starting.
            # It reads as no rollout, and a deploy of the strategy replaces it (its revision is kept for that).
            log.error("rollout entry unreadable: read as no rollout", extra={"strategy": strategy,
                                                                             "error": str(error)})
            return None, entry.revision or 0

    async def write(self, state: RolloutState, revision: int) -> int | None:
        """Write with compare-and-set; return the new revision, or None when someone else wrote first."""
        key, value = subjects.rollout_key(state.strategy), encode(state)
        try:
            if revision:
                return await self.kv.update(key, value, last=revision)
            return await self.kv.create(key, value)
        except KeyWrongLastSequenceError:
            return None


class Lease:
    """The deployers' lease: one holder at a time, a new epoch at every change of holder (the fencing token)."""

    def __init__(self, kv: KeyValue, holder: str, wall: Clock, ttl_s: float) -> None:
        self.kv = kv
        self.holder = holder
        self.wall = wall
        self.ttl_ns = int(ttl_s * NS_PER_SECOND)
        self.epoch = 0  # > 0 while held
        self._valid_until = 0
        self._decoder = codec(DeployerLease)

    def held(self) -> bool:
        return self.epoch > 0 and self.wall.now_ns() < self._valid_until

    async def refresh(self) -> bool:
        """Acquire, renew or lose the lease; return whether this instance holds it now."""
        now = self.wall.now_ns()
        try:
            entry = await self.kv.get(subjects.ROLLOUT_LEASE_KEY)
            current = self._decoder.decode(entry.value) if entry.value else None
            revision = entry.revision or 0
        except KeyNotFoundError:
            current, revision = None, 0
        if current is not None and current.holder == self.holder and current.epoch == self.epoch:
            epoch = self.epoch  # renew
        elif current is None or current.expires_ns < now or current.holder == self.holder:
            # Take over an expired lease, or our own id's after a restart (ids are unique per running
            # instance): a new epoch either way, so the previous incarnation is fenced off.
            epoch = (current.epoch if current is not None else 0) + 1
        else:
            self._lose(current)
            return False
        lease = DeployerLease(holder=self.holder, epoch=epoch, expires_ns=now + self.ttl_ns, ts_event=now)
        try:
            if revision:
                await self.kv.update(subjects.ROLLOUT_LEASE_KEY, encode(lease), last=revision)
            else:
                await self.kv.create(subjects.ROLLOUT_LEASE_KEY, encode(lease))
        except KeyWrongLastSequenceError:
            self._lose(current)
            return False
        if epoch != self.epoch:
            log.info("deployer lease acquired", extra={"holder": self.holder, "epoch": epoch})
        self.epoch = epoch
        self._valid_until = now + int(self.ttl_ns * (1 - LEASE_SAFETY))
        return True

    def step_down(self, why: str) -> None:
        if self.epoch:
            log.warning("deployer lease given up", extra={"holder": self.holder, "epoch": self.epoch, "why": why})
        self.epoch = 0
        self._valid_until = 0

    async def release(self) -> None:
        """Let a standby take over at once (clean shutdown)."""
        if not self.held():
            return
        now = self.wall.now_ns()
        lease = DeployerLease(holder=self.holder, epoch=self.epoch, expires_ns=0, ts_event=now)
        try:
            entry = await self.kv.get(subjects.ROLLOUT_LEASE_KEY)
            await self.kv.update(subjects.ROLLOUT_LEASE_KEY, encode(lease), last=entry.revision)
        except (KeyNotFoundError, KeyWrongLastSequenceError):
            pass
        self.step_down("released")

    def _lose(self, current: DeployerLease | None) -> None:
        if self.epoch:
            holder = current.holder if current else "?"
            self.step_down(f"held by {holder} (epoch {current.epoch if current else '?'})")


@dataclass(frozen=True)
class RolloutOptions:
    instance_id: str
    lease_ttl_s: float = 10.0
    probe_interval_s: float = 10.0
    replay_grace_s: float = 2.0
    known_strategies: frozenset[str] = frozenset()
    broker_instance: str = subjects.DEFAULT_EXECUTION_INSTANCE


class RolloutService:
    """The leader's rollouts: commands in, gate evaluations, effects carried out; standbys only watch."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, control: ControlHandler, clock: Clock, wall: Clock,
                 plans: Mapping[str, Plan], digests: Mapping[str, str], pool: Any, options: RolloutOptions,
                 probes: Probes | None = None, accounts: Mapping[str, Account] | None = None) -> None:
        self.js = js
        self.accounts: Mapping[str, Account] = accounts if accounts is not None else {}  # live: AccountBook's
        self.nc: Client = js._nc
        self.store = RolloutStore(kv)
        self.control = control
        self.clock = clock
        self.wall = wall
        self.plans = dict(plans)
        self.digests = dict(digests)
        self.pool = pool
        self.options = options
        self.probes = probes
        self.lease = Lease(kv, options.instance_id, wall, options.lease_ttl_s)
        self.monitor = Monitor()
        self.states: dict[str, RolloutState] = {}
        self.revisions: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._subscription: Subscription | None = None
        self._last_probe_wall = 0
        self._probe_cache: dict[str, tuple[float | None, str]] = {}
        self._input: Intake[DeployCommand] = Intake(DeployCommand, SERVICE, clock, what="deploy command")
        self._decoders = {"snapshot": codec(RiskSnapshot), "fill": codec(Fill), "portfolio": codec(PortfolioSnapshot),
                          "batch_events": codec(BatchEvents)}
        self.evaluations = 0
        self._unplanned: set[str] = set()  # rollouts whose plan is not loaded (logged once)
        self._endpoint_sent = ""  # the last broker endpoint choice the broker accepted from this instance
        self._last_input_wall: dict[str, int] = {}  # strategy -> wall time of its last risk snapshot

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.refresh_lease()

    async def stop(self) -> None:
        await self._unsubscribe()
        await self.lease.release()

    async def refresh_lease(self) -> bool:
        """Renew or acquire the lease; on becoming leader take the states over, on losing it stop acting."""
        was_leader = self._subscription is not None
        leader = await self.lease.refresh()
        if leader and not was_leader:
            async with self._lock:
                await self._take_over()
            self._subscription = await self.nc.subscribe(subjects.DEPLOY_COMMANDS_ALL, queue=subjects.DEPLOY_QUEUE,
                                                         cb=self._on_command_msg)
        elif not leader and was_leader:
            await self._unsubscribe()
        return leader

    async def _unsubscribe(self) -> None:
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            await subscription.unsubscribe()

    async def _take_over(self) -> None:
        await self.control.store.load()  # another instance may have written control state meanwhile
        self.states.clear()
        self.revisions.clear()
        for strategy, (state, revision) in (await self.store.load_all()).items():
            self.states[strategy] = restore(state)
            self.revisions[strategy] = revision
            if self.digests.get(state.plan, state.plan_digest) != state.plan_digest:
                log.warning("rollout plan file changed since the rollout started; the rollout keeps its phases",
                            extra={"strategy": strategy, "plan": state.plan})
        log.info("rollouts taken over", extra={"epoch": self.lease.epoch, "rollouts": sorted(self.states)})
        for strategy in list(self.states):
            await self._flush(strategy)

    # ------------------------------------------------------------ inputs
    async def on_snapshot(self, data: bytes) -> None:
        snapshot = self._decode("snapshot", data)
        if snapshot is None:
            return
        self._observe(snapshot.ts_event)
        self.monitor.on_snapshot(snapshot)
        self._last_input_wall[snapshot.strategy] = self.wall.now_ns()
        if isinstance(self.clock, ReplayClock):
            await self.tick(only=snapshot.strategy)

    async def on_fill(self, data: bytes) -> None:
        fill = self._decode("fill", data)
        if fill is not None:
            await self._on_fills([fill])

    async def on_batch_events(self, data: bytes) -> None:
        """A replay's order events and fills of one batch (BatchEvents): the fills count as they would one by one."""
        events = self._decode("batch_events", data)
        if events is not None and events.fills:
            await self._on_fills(events.fills)

    async def _on_fills(self, fills: list[Fill]) -> None:
        for fill in fills:
            self._observe(fill.ts_event)
            if self.monitor.on_fill(fill):
                async with self._lock:
                    state = self.states.get(fill.strategy)
                    if state is not None:
                        self.states[fill.strategy] = record_fill(state)

    async def on_portfolio(self, data: bytes) -> None:
        portfolio = self._decode("portfolio", data)
        if portfolio is None:
            return
        self._observe(portfolio.ts_event)
        self.monitor.on_portfolio(portfolio)

    def _decode(self, kind: str, data: bytes) -> Any:
        try:
            return self._decoders[kind].decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            log.warning("undecodable gate input ignored", extra={"kind": kind, "error": str(error)})
            return None

    def _observe(self, ts_event: int) -> None:
        if isinstance(self.clock, ReplayClock):
            self.clock.observe(ts_event)

    # ------------------------------------------------------------ commands
    async def _on_command_msg(self, msg: Msg) -> None:
        reply = await self.handle_command(msg.subject, msg.data)
        if msg.reply:
            await msg.respond(reply)

    async def handle_command(self, subject: str, data: bytes) -> bytes:
        with _tracer.start_as_current_span("deployer.deploy_command") as span:
            reply = await self._handle_command(subject, data)
            span.set_attribute("qmp.accepted", reply.accepted)
            span.set_attribute("qmp.command_id", reply.command_id)
            return encode(reply)

    async def _handle_command(self, subject: str, data: bytes) -> DeployReply:
        now = self.clock.now_ns()
        try:
            strategy = subjects.deploy_strategy(subject)
            subjects.check_token(strategy, "strategy")
        except ValueError as error:
            reason = f"invalid deploy command: {error}"
            await self._input.reject(self.js, subject, reason, data)
            return DeployReply(accepted=False, reason=reason, ts_event=now)
        command, invalid = await self._input.decode_request(self.js, subject, data)
        if command is None:
            return DeployReply(accepted=False, reason=invalid, ts_event=now)
        if not command.command_id:
            command = msgspec.structs.replace(command, command_id=uuid.uuid4().hex)
        async with self._lock:
            for _ in range(CAS_ATTEMPTS):
                if not self.lease.held():
                    return DeployReply(accepted=False, command_id=command.command_id, ts_event=now,
                                       reason="this deployer instance does not hold the lease; retry")
                state = self.states.get(strategy)
                if await self._seen(strategy, state, command.command_id):
                    return DeployReply(accepted=True, duplicate=True, command_id=command.command_id,
                                       rollout=state, ts_event=now)
                outcome = handle_command(strategy, state, command, self._context(strategy, state, command),
                                         self.plans, self.digests, self.options.known_strategies)
                if not outcome.accepted:
                    log.info("deploy command rejected", extra={"strategy": strategy, "reason": outcome.reason,
                                                               "command_id": command.command_id})
                    return DeployReply(accepted=False, reason=outcome.reason, command_id=command.command_id,
                                       rollout=state, ts_event=now)
                if not outcome.changed or await self._commit(strategy, outcome):
                    log.info("deploy command applied", extra={"strategy": strategy, "command_id": command.command_id,
                                                              "verb": type(command).__name__})
                    return DeployReply(accepted=True, reason=outcome.reason, command_id=command.command_id,
                                       rollout=self.states.get(strategy, outcome.state), ts_event=now)
        return DeployReply(accepted=False, reason="rollout state kept changing; try again",
                           command_id=command.command_id, ts_event=now)

    async def _seen(self, strategy: str, state: RolloutState | None, command_id: str) -> bool:
        if state is not None and command_id in state.recent_commands:
            return True
        if self.pool is None:
            return False
        return await command_seen(self.pool, strategy, command_id)

    def _context(self, strategy: str, state: RolloutState | None, command: DeployCommand) -> Context:
        # A new rollout's plan is looked up by the engine; until then any plan stands in (for its VaR key).
        wanted = state.plan if is_active(state) and state is not None else getattr(command, "plan", "")
        plan = self.plans.get(wanted) or next(iter(self.plans.values()))
        return Context(now_ns=self.clock.now_ns(), epoch=self.lease.epoch, plan=plan,
                       trading=self.control.store.entries.effective(strategy),
                       var_book=self.monitor.var_book(plan.portfolio_var_key), accounts=self.accounts,
                       rollouts=self.states)

    # ------------------------------------------------------------ gates
    async def tick(self, only: str | None = None) -> None:
        """Evaluate the rollouts whose gates are due (or just `only`), and finish any outbox left over.

        In replay, a strategy is evaluated when its own snapshot arrives: another strategy's snapshot may
        move event time first, and evaluating then would find this one's data a bar old. The timer still
        evaluates a replayed strategy whose snapshots have stopped for `replay_grace_s` of wall time, so
        data that stops while event time moves on is found stale.
        """
        if not self.lease.held():
            return
        now = self.clock.now_ns()
        due = self._due(now)
        if only is not None:
            due = {only: due[only]} if only in due else {}
        elif isinstance(self.clock, ReplayClock):
            quiet_since = self.wall.now_ns() - int(self.options.replay_grace_s * NS_PER_SECOND)
            due = {name: plan for name, plan in due.items() if self._last_input_wall.get(name, 0) < quiet_since}
        if due:
            # Probes wait on other services: outside the lock, so commands are not held up by them.
            await self._probe(now, list(due.values()))
        async with self._lock:
            for strategy in list(self.states):
                await self._flush(strategy)
            for strategy, plan in due.items():
                state = self.states.get(strategy)
                if state is not None and is_due(state, now, plan):
                    await self._evaluate(strategy, plan, now)

    def _due(self, now: int) -> dict[str, Plan]:
        due: dict[str, Plan] = {}
        for strategy, state in self.states.items():
            plan = self.plans.get(state.plan)
            if plan is None:
                if strategy not in self._unplanned:
                    self._unplanned.add(strategy)
                    log.error("rollout plan not loaded: gates not evaluated", extra={"strategy": strategy,
                                                                                     "plan": state.plan})
            elif is_due(state, now, plan):
                due[strategy] = plan
        return due

    async def _evaluate(self, strategy: str, plan: Plan, now: int) -> None:
        state = self.states[strategy]
        trading = self.control.store.entries.effective(strategy)
        allocation = min(state.allocation, trading.allocation)
        readings: dict[str, Reading] = {
            name: self.monitor.reading(strategy, spec, now, allocation)
            for name, spec in plan.enabled_metrics().items()
        }
        ctx = Context(now_ns=now, epoch=self.lease.epoch, plan=plan, trading=trading,
                      var_book=self.monitor.var_book(plan.portfolio_var_key), accounts=self.accounts,
                      rollouts=self.states)
        outcome = evaluate(state, readings, ctx, exposure=self.monitor.gross_exposure(strategy))
        self.evaluations += 1
        if outcome.changed:
            await self._commit(strategy, outcome)

    async def _probe(self, now: int, plans: list[Plan]) -> None:
        """Refresh latency and memory readings (at most every probe interval of wall time), stamped `now`."""
        wanted = {spec.source for plan in plans for spec in plan.enabled_metrics().values()} & set(PROBE_SOURCES)
        if not wanted or self.probes is None:
            return
        wall = self.wall.now_ns()
        if wall - self._last_probe_wall >= self.options.probe_interval_s * NS_PER_SECOND:
            self._last_probe_wall = wall
            if "latency_ms" in wanted:
                self._probe_cache["latency_ms"] = await self.probes.latency_ms()
            if "memory_mb" in wanted:
                self._probe_cache["memory_mb"] = await self.probes.memory_mb()
        for source, (value, detail) in self._probe_cache.items():
            # Stamped with the deployer's clock: in replay, a probe is as fresh as the evaluation it serves.
            self.monitor.on_probe(source, value, now, detail)

    # ------------------------------------------------------------ effects
    async def _commit(self, strategy: str, outcome: Outcome) -> bool:
        """Write the decided state with CAS, then carry out its outbox; False when the write lost a race."""
        state = outcome.state
        assert state is not None
        if not self.lease.held():
            return False
        revision = await self.store.write(state, self.revisions.get(strategy, 0))
        if revision is None:
            await self._reload(strategy)
            return False
        self.states[strategy] = state
        self.revisions[strategy] = revision
        await self._flush(strategy)
        return True

    async def _reload(self, strategy: str) -> None:
        stored, revision = await self.store.get(strategy)
        if stored is not None and stored.epoch > self.lease.epoch:
            self.lease.step_down(f"rollout {strategy} written by epoch {stored.epoch}")
            await self._unsubscribe()
        if stored is None:
            self.states.pop(strategy, None)
            if revision:  # an unreadable or deleted entry: the next write replaces it at this revision
                self.revisions[strategy] = revision
            else:
                self.revisions.pop(strategy, None)
        else:
            self.states[strategy] = stored
            self.revisions[strategy] = revision

    async def _flush(self, strategy: str) -> None:
        """Carry out a state's outbox (idempotent), then clear it with CAS."""
        state = self.states.get(strategy)
        if state is None or not has_outbox(state) or not self.lease.held():
            return
        if state.outbox_endpoint:
            await self._send_endpoint(state)
        for command in state.outbox_controls:
            reply = await self.control.apply(strategy, command)
            if not reply.accepted:
                log.error("deployer control command rejected", extra={"strategy": strategy, "reason": reply.reason,
                                                                      "command_id": command.command_id})
        for event in state.outbox_events:
            await self._record(event)
        revision = await self.store.write(clear_outbox(state), self.revisions[strategy])
        if revision is None:
            await self._reload(strategy)
            return
        self.states[strategy] = clear_outbox(state)
        self.revisions[strategy] = revision

    async def _send_endpoint(self, state: RolloutState) -> None:
        """Pin the execution broker to an endpoint; a broker that does not answer is logged, not retried."""
        if state.outbox_endpoint == self._endpoint_sent:
            return  # the broker is shared: several rollouts reach the same choice from the same reading
        command = BrokerCommand(command="use_endpoint", endpoint=state.outbox_endpoint,  # type: ignore[arg-type]
                                issued_by=SERVICE, command_id=f"{state.rollout_id}-{state.event_seq}-endpoint",
                                ts_event=self.clock.now_ns())
        try:
            reply = codec(BrokerReply).decode((await self.nc.request(
                subjects.broker(self.options.broker_instance), encode(command), timeout=BROKER_TIMEOUT_S)).data)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, msgspec.DecodeError) as error:
            log.warning("broker endpoint command not delivered", extra={"strategy": state.strategy,
                                                                        "endpoint": command.endpoint,
                                                                        "error": type(error).__name__})
            return
        if not reply.accepted:
            log.warning("broker endpoint command refused", extra={"strategy": state.strategy, "reason": reply.reason})
            return
        self._endpoint_sent = command.endpoint

    async def _record(self, event: DeploymentEvent) -> None:
        level = logging.WARNING if event.kind in ("alert", "rolled_back", "held", "halted", "aborted") else logging.INFO
        log.log(level, "rollout %s", event.kind, extra={"strategy": event.strategy, "phase": event.phase_to,
                                                        "reason": event.reason, "seq": event.seq})
        await bus.publish(self.js, subjects.deploy_events(event.strategy), event,
                          msg_id=f"{event.strategy}:{event.rollout_id}:{event.seq}")
        if self.pool is not None:
            await write_deployment_event(self.pool, event)

    def detail(self) -> dict[str, Any]:
        return {"leader": self.lease.held(), "epoch": self.lease.epoch, "instance": self.lease.holder,
                "rollouts": {strategy: f"{state.status} {state.phases[state.phase_index].name}"
                             if state.phase_index >= 0 else state.status for strategy, state in self.states.items()},
                "evaluations": self.evaluations}
