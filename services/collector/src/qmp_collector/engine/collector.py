"""The collector's decisions: validate batches in arrival order, per venue, and never publish one twice.

Synchronous and without I/O; the clock is injected. What comes out is an `Outcome`: the cleaned batch to
publish (or None) and the rejected rows with their reasons, for the dead-letter queue.
"""

from dataclasses import dataclass, field

import msgspec

from qmp_core import subjects
from qmp_core.clock import Clock
from qmp_core.messages import BarBatch
from qmp_core.validation import BatchRejected, ValidatedBatch, validate_batch


@dataclass(frozen=True)
class Outcome:
    """What became of one batch: the cleaned batch to publish (None if nothing is left) and rejections."""

    batch: BarBatch | None
    rejected: list[tuple[str, str]] = field(default_factory=list)
    batch_reason: str = ""  # non-empty when the whole batch was rejected

    @property
    def whole_batch_rejected(self) -> bool:
        return bool(self.batch_reason)


@dataclass(frozen=True)
class ResumePoint:
    """The last batch already on the stream for a venue: batches at or before it are not published again."""

    ts_event: int
    chunk: int = 0
    chunks: int = 1

    def covers(self, batch: BarBatch) -> bool:
        return batch.ts_event < self.ts_event or (batch.ts_event == self.ts_event and batch.chunk <= self.chunk)


class CollectorEngine:
    """Validate batches in arrival order, per venue and chunk; count what was accepted and rejected.

    A batch whose timestamp is not after the last accepted one of the same (venue, chunk) is rejected
    whole, as out-of-order or duplicate. Within an accepted batch, bad rows are dropped with a reason.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last: dict[tuple[str, int], int] = {}
        self.accepted_batches = 0
        self.rejected_batches = 0
        self.rejected_rows = 0

    def last_ts(self, venue: str) -> int | None:
        """Return the latest accepted ts_event of a venue over all chunks."""
        seen = [ts for (v, _), ts in self._last.items() if v == venue]
        return max(seen) if seen else None

    def seed(self, venue: str, point: ResumePoint) -> None:
        """Continue after a batch already published before a restart."""
        for c in range(max(point.chunks, point.chunk + 1)):
            # Chunks after the last one published may still come at the same ts.
            self._last[(venue, c)] = point.ts_event if c <= point.chunk else point.ts_event - 1

    def process(self, batch: BarBatch) -> Outcome:
        """Return the batch's valid rows as a batch to publish and every rejection with its reason."""
        key = (batch.venue, batch.chunk)
        try:
            self._check_envelope(batch)
            valid = validate_batch(batch, self._last.get(key))
        except BatchRejected as error:
            self.rejected_batches += 1
            self.rejected_rows += len(batch.symbols)
            reason = str(error)
            return Outcome(None, [(s, reason) for s in batch.symbols], reason)
        self._last[key] = batch.ts_event
        self.rejected_rows += len(valid.rejected)
        cleaned = _valid_rows(batch, valid, batch.ts_init or self._clock.now_ns())
        if cleaned is not None:
            self.accepted_batches += 1
        return Outcome(cleaned, valid.rejected)

    def clean(self, batch: BarBatch) -> BarBatch | None:
        """Return the batch's valid rows, ignoring arrival order and counting nothing (None if none)."""
        try:
            self._check_envelope(batch)
            valid = validate_batch(batch)
        except BatchRejected:
            return None
        return _valid_rows(batch, valid, batch.ts_init)

    @staticmethod
    def _check_envelope(batch: BarBatch) -> None:
        if not subjects.TOKEN_PATTERN.match(batch.venue):
            raise BatchRejected(f"venue must match {subjects.TOKEN_PATTERN.pattern}, got {batch.venue!r}")
        if not 0 <= batch.chunk < batch.chunks:
            raise BatchRejected(f"chunk must be in [0, chunks), got chunk={batch.chunk} chunks={batch.chunks}")


def _valid_rows(batch: BarBatch, valid: ValidatedBatch, ts_init: int) -> BarBatch | None:
    if not valid.symbols:
        return None
    if not valid.rejected:
        return batch if ts_init == batch.ts_init else msgspec.structs.replace(batch, ts_init=ts_init)
    return msgspec.structs.replace(
        batch, symbols=valid.symbols, open=valid.open.tolist(), high=valid.high.tolist(),
        low=valid.low.tolist(), close=valid.close.tolist(), volume=valid.volume.tolist(), ts_init=ts_init,
    )
