"""Which account each strategy trades from, and each account's capital, kept current in the risk engine.

The deployer owns both: a rollout (the `qmp_rollouts` bucket) names its strategy's account, and the
`qmp_accounts` bucket holds the accounts. Risk reads them at start, before it rebuilds from the streams, and
follows every later change with a KV watch, so the account breaker knows an account's members and capital.
"""

import asyncio
import logging
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from qmp_core import bus, subjects
from qmp_core.messages import Account, RolloutState, codec
from qmp_risk.engine.accounts import AccountBook

log = logging.getLogger(__name__)
PREFIX = subjects.rollout_key("")


class AccountWatch:
    def __init__(self, book: AccountBook, js: JetStreamContext) -> None:
        self.book = book
        self.js = js
        self._rollouts = codec(RolloutState)
        self._accounts = codec(Account)
        self._watches: list[tuple[Any, asyncio.Task[None]]] = []

    async def start(self) -> None:
        for bucket, apply in ((subjects.KV_ACCOUNTS, self._on_account), (subjects.KV_ROLLOUTS, self._on_rollout)):
            kv = await self.js.key_value(bucket)
            for key in await _keys(kv):
                try:
                    apply(key, (await kv.get(key)).value)
                except (KeyNotFoundError, KeyDeletedError):
                    continue
            watcher = await kv.watchall(include_history=False)
            self._watches.append((watcher, asyncio.create_task(self._follow(watcher, apply),
                                                               name=f"risk-watch-{bucket}")))

    async def stop(self) -> None:
        for watcher, task in self._watches:
            await bus.stop_watch(watcher, task)
        self._watches = []

    @staticmethod
    async def _follow(watcher: Any, apply: Any) -> None:
        async for entry in watcher:
            if entry is not None:
                apply(entry.key, entry.value if entry.operation in (None, "PUT") else None)

    def _on_rollout(self, key: str, value: bytes | None) -> None:
        if not key.startswith(PREFIX):
            return  # the deployers' lease
        strategy = key[len(PREFIX):]
        account = ""
        if value:
            try:
                account = self._rollouts.decode(value).account
            except msgspec.DecodeError:
                log.error("rollout entry unreadable: its account is not followed", extra={"strategy": strategy})
        self.book.follow(strategy, account)

    def _on_account(self, key: str, value: bytes | None) -> None:
        capital = 0.0
        if value:
            try:
                capital = self._accounts.decode(value).capital
            except msgspec.DecodeError:
                log.error("account entry unreadable", extra={"account": key})
        self.book.set_capital(key, capital)


async def _keys(kv: KeyValue) -> list[str]:
    try:
        return list(await kv.keys())
    except NoKeysError:
        return []
