"""The collector's decisions: validate batches in arrival order, per venue, and never publish one twice.

Synchronous and without I/O; the clock is injected. What comes out is an `Outcome`: the cleaned batch to
publish (or None) and the rejected rows with their reasons, for the dead-letter queue.
"""

import logging
import math
from dataclasses import dataclass, field
from itertools import repeat

import msgspec
import numpy as np

from qmp_core import subjects
from qmp_core.clock import NS_PER_SECOND, Clock
from qmp_core.messages import BarBatch
from qmp_core.validation import BatchRejected, ValidatedBatch, validate_batch

log = logging.getLogger(__name__)
MAX_REASONS = 100  # rows listed with the reason of a whole-batch rejection (the rest are counted)


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


@dataclass(frozen=True)
class InputBounds:
    """What the collector lets through, beyond a row's own consistency (`qmp_core.validation`).

    `future_tolerance_s`: a batch may be stamped at most this far after the wall clock (bars of the past
    are replayed, bars of the future do not exist). `window_end_ns`: a replay's last timestamp, if it has
    one. `max_price_jump`: a close more than this factor away from the symbol's last accepted close is
    held (dead-lettered, never published); `confirm_bars` consecutive held closes that agree with each
    other within the factor are a new level (a split, a re-listing) and the last of them is accepted.
    """

    future_tolerance_s: float = 300.0
    window_end_ns: int | None = None
    max_price_jump: float = 5.0
    confirm_bars: int = 3


@dataclass
class _Held:
    close: float
    count: int


class CollectorEngine:
    """Validate batches in arrival order, per venue and chunk; count what was accepted and rejected.

    A batch whose timestamp is not after the last accepted one of the same (venue, chunk), or later than
    `InputBounds` allow, is rejected whole. Within an accepted batch, bad rows and rows whose price jumped
    beyond the bound are dropped with a reason.
    """

    def __init__(self, clock: Clock, wall: Clock, bounds: InputBounds = InputBounds()) -> None:
        self._clock = clock
        self._wall = wall  # judges "from the future"; a replay's clock is event time and cannot
        self.bounds = bounds
        self._last: dict[tuple[str, int], int] = {}
        self._last_close: dict[str, dict[str, float]] = {}  # venue → symbol → last accepted close
        self._held: dict[str, dict[str, _Held]] = {}  # venue → symbol → the new level waiting for confirmation
        self.accepted_batches = 0
        self.rejected_batches = 0
        self.rejected_rows = 0
        self.held_prices = 0

    def latest_allowed(self) -> int:
        """Return the latest ts_event a batch may carry now."""
        latest = self._wall.now_ns() + round(self.bounds.future_tolerance_s * NS_PER_SECOND)
        end = self.bounds.window_end_ns
        return latest if end is None else min(latest, end)

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
            valid = validate_batch(batch, self._last.get(key), self.latest_allowed())
        except BatchRejected as error:
            self.rejected_batches += 1
            self.rejected_rows += len(batch.symbols)
            reason = str(error)
            return Outcome(None, [(s, reason) for s in batch.symbols[:MAX_REASONS]], reason)
        valid = self._hold_jumps(batch.venue, valid)
        if valid.symbols:  # a batch with no usable row is not the venue's time: later batches are not judged by it
            self._last[key] = batch.ts_event
        self.rejected_rows += len(valid.rejected)
        cleaned = _valid_rows(batch, valid, batch.ts_init or self._clock.now_ns())
        if cleaned is not None:
            self.accepted_batches += 1
        return Outcome(cleaned, valid.rejected)

    def _hold_jumps(self, venue: str, valid: ValidatedBatch) -> ValidatedBatch:
        """Drop the rows whose close jumped beyond the bound from the symbol's last accepted close."""
        jump = self.bounds.max_price_jump
        if jump <= 0:
            return valid
        lasts = self._last_close.setdefault(venue, {})
        pending_levels = self._held.setdefault(venue, {})
        closes = np.asarray(valid.close, dtype=np.float64)
        last = np.fromiter(map(lasts.get, valid.symbols, repeat(math.nan)), dtype=np.float64,
                           count=len(valid.symbols))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = closes / last
        # Judged for the whole batch at once; only the rows out of bounds (rare) are looked at one by one.
        within = np.isnan(last) | ((ratio >= 1.0 / jump) & (ratio <= jump))
        lasts.update(zip(valid.symbols, closes.tolist(), strict=True))  # out-of-bounds rows are put back below
        if pending_levels:
            for i in np.flatnonzero(within):
                pending_levels.pop(valid.symbols[i], None)
        held: list[tuple[str, str]] = []
        keep = within.copy()
        for i in np.flatnonzero(~within):
            symbol, close, reference = valid.symbols[i], float(closes[i]), float(last[i])
            pending = pending_levels.get(symbol)
            agrees = pending is not None and 1.0 / jump <= close / pending.close <= jump
            count = pending.count + 1 if pending is not None and agrees else 1
            if count >= self.bounds.confirm_bars:  # the new level held for long enough: take it
                del pending_levels[symbol]
                keep[i] = True
                continue
            lasts[symbol] = reference
            pending_levels[symbol] = _Held(close, count)
            held.append((symbol, f"price held: close {close:g} is more than {jump:g}x away from the last accepted "
                                 f"{reference:g} ({count} of {self.bounds.confirm_bars} bars to confirm a new level)"))
        if not held:
            return valid
        self.held_prices += len(held)
        # An alert as well as the dead letters: someone should look at the feed.
        log.warning("prices held: jumped beyond the bound", extra={
            "venue": venue, "ts_event": valid.ts_event, "symbols": [s for s, _ in held[:20]], "count": len(held)})
        symbols = [s for s, k in zip(valid.symbols, keep, strict=True) if k]
        return ValidatedBatch(valid.ts_event, symbols, valid.open[keep], valid.high[keep], valid.low[keep],
                              valid.close[keep], valid.volume[keep], valid.rejected + held)

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
