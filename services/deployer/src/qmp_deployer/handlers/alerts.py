"""Alerts to people: breaker trips, halts and resumes, gates crossing their levels and clearing, failed
rollouts and verifications, on the bus and through apprise.

The deployer reads the events (core subscriptions: the records are the streams they come from), the rule
in `engine.alerts` decides, and each alert goes out in the background, so a channel that is slow or down
never holds up control: on `qmp.alert.<strategy>` (kept in the audit stream; `qmp alerts` prints them), in
the deployer's log, and to every channel of `QMP_ALERT_URLS` (apprise URLs: Slack, Telegram, e-mail, a
webhook `json://host/path`, ...). What was sent, failed and held back is in its health and metrics.
"""

import asyncio
import logging
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import apprise
import msgspec
from apprise.manager_plugins import NotificationManager
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from qmp_core import bus, metrics, subjects
from qmp_core.messages import Alert as AlertMessage
from qmp_core.messages import BreakerEvent, DeploymentEvent, TradingState, codec
from qmp_deployer.engine.alerts import Alert, AlertRules

log = logging.getLogger(__name__)

LEVELS = {"info": apprise.NotifyType.INFO, "warning": apprise.NotifyType.WARNING,
          "critical": apprise.NotifyType.FAILURE}


class Alerter:
    """Decode the events, ask the rules, send what they return to every configured channel."""

    def __init__(self, urls: Sequence[str], quiet_s: float = 300.0,
                 wall: Callable[[], float] = time.time) -> None:
        if urls:
            with warnings.catch_warnings():
                # apprise's e-mail plugin imports `imghdr` (deprecated since Python 3.11) when the plugins
                # load: loaded here, once, rather than on the first alert.
                warnings.simplefilter("ignore", DeprecationWarning)
                NotificationManager().load_modules()
        self.notifier = apprise.Apprise()
        for url in urls:
            if not self.notifier.add(url):
                raise ValueError(f"QMP_ALERT_URLS: apprise does not understand {url.split('://')[0]}:// URLs")
        self.rules = AlertRules(quiet_s=quiet_s)
        self.wall = wall
        self.sent = 0
        self.failed = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscriptions: list[Subscription] = []
        self._js: JetStreamContext | None = None
        self.published = 0

    async def start(self, nc: Client) -> None:
        self._js = nc.jetstream()
        readings: list[tuple[str, Any, Callable[[Any, float], Alert | None]]] = [
            (subjects.BREAKER_EVENTS_ALL, BreakerEvent, self.rules.on_breaker),
            (subjects.STATE_ALL, TradingState, self.rules.on_state),
            (subjects.DEPLOY_EVENTS_ALL, DeploymentEvent, self.rules.on_deployment),
        ]
        for subject, type_, rule in readings:
            self._subscriptions.append(await nc.subscribe(subject, cb=self._reader(type_, rule)))

    def _reader(self, type_: Any, rule: Callable[[Any, float], Alert | None]) -> Callable[[Msg], Awaitable[None]]:
        decoder = codec(type_)

        async def on_message(msg: Msg) -> None:
            try:
                event = decoder.decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return  # not ours to judge: the services that read these subjects dead-letter bad input
            alert = rule(event, self.wall())
            if alert is not None:
                task = asyncio.create_task(self.send(alert))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        return on_message

    async def send(self, alert: Alert) -> bool:
        """Publish one alert on the bus and send it to every channel; count and log the outcome, never raise."""
        await self._publish(alert)
        if not len(self.notifier):
            log.info("alert", extra={"alert": alert.title, "level": alert.level, "body": alert.body})
            return True
        try:
            delivered = bool(await self.notifier.async_notify(title=alert.title, body=alert.body,
                                                              notify_type=LEVELS[alert.level]))
        except Exception as error:  # a channel's library failing must not take the deployer with it
            log.warning("alert not sent", extra={"alert": alert.title, "error": repr(error)})
            delivered = False
        if delivered:
            self.sent += 1
        else:
            self.failed += 1
            log.warning("alert not delivered to every channel", extra={"alert": alert.title})
        metrics.ALERTS.labels(alert.level, "sent" if delivered else "failed").inc()
        log.info("alert", extra={"alert": alert.title, "level": alert.level, "delivered": delivered})
        return delivered

    async def _publish(self, alert: Alert) -> None:
        if self._js is None or not alert.strategy:
            return
        message = AlertMessage(strategy=alert.strategy, level=alert.level, title=alert.title, body=alert.body,
                               key=alert.key, held_back=alert.held_back, ts_event=int(self.wall() * 1e9))
        try:
            await bus.publish(self._js, subjects.alert(alert.strategy), message)
            self.published += 1
        except Exception as error:  # the channels still get it; the record of the event itself is elsewhere
            log.warning("alert not published on the bus", extra={"alert": alert.title, "error": repr(error)})

    def detail(self) -> dict[str, int]:
        return {"sent": self.sent, "failed": self.failed, "held_back": self.rules.suppressed,
                "channels": len(self.notifier), "published": self.published}

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)
