"""Each hosted strategy's rollout, followed through a watch of the `qmp_rollouts` bucket.

The deployer writes the bucket; execution only reads it, for two things: the rollout id that goes on every
new order and fill (`deployment_id`), and the phase's environment, which decides whether this instance
(`QMP_PHASE_ENV`: its venue's paper endpoint, or its live one) trades the strategy now
(`ExecutionEngine.follow_rollout`). `start` returns once the current rollouts are loaded, so no order goes
out at the live venue for a strategy that is still in its paper phase. An entry that is no `RolloutState`
is dead-lettered and leaves the strategy as it was.
"""

import logging

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from qmp_core import metrics, subjects
from qmp_core.messages import RolloutState, codec
from qmp_core.rollout_state import is_active, phase_env, phase_name
from qmp_execution.engine import ExecutionEngine
from qmp_execution.handlers.bucket_watch import BucketWatch
from qmp_execution.handlers.constants import KV_DELETES

log = logging.getLogger(__name__)


class RolloutWatch(BucketWatch):
    """Keep the engine's view of every hosted strategy's rollout equal to the bucket's entries."""

    bucket = subjects.KV_ROLLOUTS

    def __init__(self, kv: KeyValue, engine: ExecutionEngine, js: JetStreamContext) -> None:
        super().__init__(kv, engine, js)
        self._decoder = codec(RolloutState)
        self._prefix = subjects.rollout_key("")
        self._phases: dict[str, tuple[str, str]] = {}  # strategy -> (phase, env) exported as 1

    def _export(self, strategy: str, rollout: RolloutState | None) -> None:
        """Set the rollout's phase and the allocation it leaves here in the service's metrics."""
        previous = self._phases.pop(strategy, None)
        if previous is not None:
            metrics.ROLLOUT_PHASE.labels(strategy, *previous).set(0.0)
        if rollout is not None and is_active(rollout):
            self._phases[strategy] = (phase_name(rollout), phase_env(rollout))
            metrics.ROLLOUT_PHASE.labels(strategy, *self._phases[strategy]).set(1.0)
        metrics.ALLOCATION.labels(strategy).set(self.engine.state(strategy).allocation)

    def apply(self, key: str, value: bytes, operation: str | None) -> str | None:
        """Apply one change of the bucket; return why a value is invalid (the strategy then stays as it was)."""
        if not key.startswith(self._prefix):
            return None
        strategy = key.removeprefix(self._prefix)
        if operation in KV_DELETES or not value:
            rollout = None
        else:
            try:
                rollout = self._decoder.decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                log.error("rollout entry refused", extra={"key": key, "error": str(error)})
                return f"invalid RolloutState: {error}"
            if rollout.strategy != strategy:
                return f"rollout of {rollout.strategy!r} under the key of {strategy!r}"
        if not self.engine.follow_rollout(strategy, rollout):
            return None
        self.updates += 1
        self._export(strategy, rollout)
        log.info("rollout followed", extra={
            "strategy": strategy, "deployment_id": rollout.rollout_id if rollout else "",
            "phase_index": rollout.phase_index if rollout else -1,
            "elsewhere": self.engine.elsewhere.get(strategy, "")})
        return None
