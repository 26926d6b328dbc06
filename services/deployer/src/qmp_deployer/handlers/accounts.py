"""Account requests: decode → engine → audit stream, bucket, database → reply. No decisions here.

`qmp.accounts.<sender>.<account>` carries a `SetAccount` from an operator (the server lets only operators
publish there, each under their own name). The change is journaled first (`qmp.audit.accounts.<account>`,
deduplicated by command id), then written to the `qmp_accounts` bucket, then to `account_audit`; a request sent
again with the same command id is answered as a duplicate. What rollouts hold is read from their bucket at each
request, so any deployer instance of the queue group answers alike. `AccountBook` mirrors the bucket for the rollouts'
capital checks, including changes another deployer instance wrote.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

import asyncpg
import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from qmp_core import bus, subjects
from qmp_core.clock import Clock
from qmp_core.messages import Account, AccountReply, RolloutState, SetAccount, codec, encode
from qmp_deployer.engine.accounts import decide_account
from qmp_deployer.store import account_change_seen, write_account_change

log = logging.getLogger(__name__)


class AccountBook:
    """The accounts in the bucket, by id, kept current by a watch (`accounts` is the live mapping)."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.accounts: dict[str, Account] = {}
        self._decoder = codec(Account)
        self._watcher: object | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            keys = await self.kv.keys()
        except NoKeysError:
            keys = []
        for key in keys:
            try:
                entry = await self.kv.get(key)
            except (KeyNotFoundError, KeyDeletedError):
                continue
            self.apply(key, entry.value)
        self._watcher = await self.kv.watchall(include_history=False)
        self._task = asyncio.create_task(self._follow(), name="deployer-accounts-watch")

    async def close(self) -> None:
        await bus.stop_watch(self._watcher, self._task)

    async def _follow(self) -> None:
        async for entry in self._watcher:  # type: ignore[attr-defined]
            if entry is not None:
                self.apply(entry.key, entry.value if entry.operation in (None, "PUT") else None)

    def apply(self, key: str, value: bytes | None) -> None:
        if not value:
            self.accounts.pop(key, None)
            return
        try:
            self.accounts[key] = self._decoder.decode(value)
        except msgspec.DecodeError:  # nobody but the deployer writes here: an unreadable entry counts as none
            log.error("account entry unreadable; ignored", extra={"account": key})
            self.accounts.pop(key, None)


class AccountsHandler:
    """Answers account requests one at a time (they are rare; one at a time keeps read-then-write exact)."""

    def __init__(self, js: JetStreamContext, book: AccountBook, clock: Clock, pool: asyncpg.Pool | None,
                 rollouts: Callable[[], Awaitable[Mapping[str, RolloutState]]]) -> None:
        self.js = js
        self.book = book
        self.clock = clock
        self.pool = pool
        self.rollouts = rollouts
        self._decoder = codec(SetAccount)
        self._lock = asyncio.Lock()

    async def handle(self, subject: str, data: bytes) -> bytes:
        return encode(await self.apply(subject, data))

    async def apply(self, subject: str, data: bytes) -> AccountReply:
        now = self.clock.now_ns()
        try:
            sender, account_id = subjects.accounts_sender_and_account(subject)
            request = self._decoder.decode(data)
        except (ValueError, msgspec.DecodeError) as error:
            return AccountReply(accepted=False, reason=f"invalid SetAccount: {error}", ts_event=now)
        kv = self.book.kv
        async with self._lock:
            current, revision = await self._current(account_id)
            if request.command_id and self.pool is not None and \
                    await account_change_seen(self.pool, account_id, request.command_id):
                return AccountReply(accepted=True, duplicate=True, account=current, ts_event=now,
                                    reason="already applied (same command id)")
            decision = decide_account(account_id, sender, request, current, await self.rollouts(), now)
            if not decision.accepted or decision.record is None:
                return AccountReply(accepted=decision.accepted, reason=decision.reason, account=current,
                                    ts_event=now)
            await bus.publish(self.js, subjects.audit_accounts(account_id), decision.record,
                              msg_id=f"accounts:{account_id}:{request.command_id}" if request.command_id else None)
            if decision.account is None:
                await kv.delete(account_id, last=revision or None)
            elif revision:
                await kv.update(account_id, encode(decision.account), last=revision)
            else:
                await kv.create(account_id, encode(decision.account))
            # The mirror follows the watch too; applied here so the next deploy sees it at once.
            self.book.apply(account_id, encode(decision.account) if decision.account is not None else None)
            if self.pool is not None:
                await write_account_change(self.pool, decision.record)
        log.warning("account changed", extra={"account": account_id, "sender": sender, "removed": decision.account
                                              is None, "command_id": request.command_id, "reason": request.reason})
        return AccountReply(accepted=True, account=decision.account, ts_event=now)

    async def _current(self, account_id: str) -> tuple[Account | None, int]:
        """The account and its revision (0: none, or deleted: `create` writes it anew)."""
        try:
            entry = await self.book.kv.get(account_id)
        except (KeyNotFoundError, KeyDeletedError):
            return None, 0
        if not entry.value:
            return None, entry.revision or 0
        try:
            return codec(Account).decode(entry.value), entry.revision or 0
        except msgspec.DecodeError:
            log.error("account entry unreadable; replaced", extra={"account": account_id})
            return None, entry.revision or 0
