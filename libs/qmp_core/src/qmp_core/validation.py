"""Bar validation shared by every service that takes market data in.

A row is rejected, with its reason, for a price that is not finite or outside [PRICE_MIN, PRICE_MAX], high
below low, a close outside [low, high], a volume that is negative, not finite or above VOLUME_MAX, a
duplicate symbol within the batch. A batch is rejected whole when it is empty, its columns disagree in
length, or its timestamp is not after the last one accepted or later than the latest one allowed.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from qmp_core.messages import BarBatch

# Outside these no listed instrument trades: 1e308 or 5e-324 is a corrupt feed, not a price, and marking a
# book with it would make equity meaningless.
PRICE_MIN = 1e-8
PRICE_MAX = 1e9
VOLUME_MAX = 1e15


class BatchRejected(ValueError):
    """The whole batch is unusable; the message says why."""


@dataclass(frozen=True)
class ValidatedBatch:
    ts_event: int
    symbols: list[str]
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    rejected: list[tuple[str, str]] = field(default_factory=list)


def bar_checks(o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray, v: np.ndarray) -> (
        tuple[tuple[np.ndarray, str], ...]):
    """Return each rule a bar must keep, as (rows that break it, why), over columns of bars."""
    with np.errstate(invalid="ignore"):  # NaN compares false; the first rule names it
        return (
            (~(np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c)), "non-finite price"),
            ((o < PRICE_MIN) | (h < PRICE_MIN) | (lo < PRICE_MIN) | (c < PRICE_MIN), f"price below {PRICE_MIN:g}"),
            ((o > PRICE_MAX) | (h > PRICE_MAX) | (lo > PRICE_MAX) | (c > PRICE_MAX), f"price above {PRICE_MAX:g}"),
            (h < lo, "high below low"),
            ((c < lo) | (c > h) | (o < lo) | (o > h), "open or close outside [low, high]"),
            (~np.isfinite(v) | (v < 0) | (v > VOLUME_MAX), "volume negative, non-finite or above 1e15"),
        )


def row_reasons(o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray, v: np.ndarray,
                checks: tuple[tuple[np.ndarray, str], ...] | None = None) -> list[str | None]:
    """Return, for each bar, why it is rejected (the first rule it breaks, with its values) or None."""
    reasons: list[str | None] = [None] * len(o)
    for mask, reason in checks if checks is not None else bar_checks(o, h, lo, c, v):
        for i in np.flatnonzero(mask):
            if reasons[i] is None:
                reasons[i] = f"{reason}: o={o[i]} h={h[i]} l={lo[i]} c={c[i]} v={v[i]}"
    return reasons


def validate_batch(batch: BarBatch, last_ts_event: int | None = None,
                   latest_ts_event: int | None = None) -> ValidatedBatch:
    """Return the batch's valid rows as arrays and the rejected rows with reasons; raise BatchRejected.

    `latest_ts_event` is the latest timestamp a batch may carry (the clock plus its tolerance, or the end
    of a replay's window): one batch from the future would otherwise become the time every later batch
    is judged against.
    """
    n = len(batch.symbols)
    if n == 0:
        raise BatchRejected("empty batch: no symbols")
    lengths = {len(batch.open), len(batch.high), len(batch.low), len(batch.close), len(batch.volume)}
    if lengths != {n}:
        raise BatchRejected(f"column lengths differ: symbols={n}, columns={sorted(lengths)}")
    if batch.ts_event <= 0:
        raise BatchRejected(f"ts_event must be a positive int ns, got {batch.ts_event}")
    if last_ts_event is not None and batch.ts_event <= last_ts_event:
        kind = "duplicate" if batch.ts_event == last_ts_event else "out-of-order"
        raise BatchRejected(f"{kind} timestamp: ts_event={batch.ts_event} is not after {last_ts_event}")
    if latest_ts_event is not None and batch.ts_event > latest_ts_event:
        raise BatchRejected(f"timestamp from the future: ts_event={batch.ts_event} is after the latest allowed "
                            f"{latest_ts_event}")
    o = np.asarray(batch.open, dtype=np.float64)
    h = np.asarray(batch.high, dtype=np.float64)
    lo = np.asarray(batch.low, dtype=np.float64)
    c = np.asarray(batch.close, dtype=np.float64)
    v = np.asarray(batch.volume, dtype=np.float64)
    checks = bar_checks(o, h, lo, c, v)
    if not any(mask.any() for mask, _ in checks) and len(set(batch.symbols)) == n:  # the usual clean batch
        return ValidatedBatch(batch.ts_event, list(batch.symbols), o, h, lo, c, v, [])
    reasons = row_reasons(o, h, lo, c, v, checks)
    seen: set[str] = set()
    for i, symbol in enumerate(batch.symbols):
        if symbol in seen and reasons[i] is None:
            reasons[i] = "duplicate symbol in batch"
        seen.add(symbol)
    keep = np.array([r is None for r in reasons], dtype=bool)
    rejected = [(batch.symbols[i], r) for i, r in enumerate(reasons) if r is not None]
    symbols = [s for s, k in zip(batch.symbols, keep, strict=True) if k]
    return ValidatedBatch(batch.ts_event, symbols, o[keep], h[keep], lo[keep], c[keep], v[keep], rejected)


def merge_chunks(parts: Sequence[ValidatedBatch]) -> ValidatedBatch:
    """Return the validated chunks of one timestamp as one batch, rows in the order of the parts given.

    The collector splits a universe into chunks (`BarBatch.chunk` of `chunks`, one timestamp); a reader
    that needs the whole timestamp joins them here once it holds every chunk.
    """
    if not parts:
        raise ValueError("no chunks to merge")
    if len({p.ts_event for p in parts}) != 1:
        raise ValueError(f"chunks of one timestamp expected, got {sorted({p.ts_event for p in parts})}")
    if len(parts) == 1:
        return parts[0]
    columns = (np.concatenate([getattr(p, name) for p in parts]) for name in ("open", "high", "low", "close", "volume"))
    return ValidatedBatch(parts[0].ts_event, [s for p in parts for s in p.symbols], *columns,
                          rejected=[r for p in parts for r in p.rejected])
