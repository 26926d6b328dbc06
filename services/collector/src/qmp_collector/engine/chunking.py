"""Chunking: a universe too big for one message goes out as `chunks` batches of one timestamp."""

import math

import msgspec

from qmp_core.messages import BarBatch


def chunk(batch: BarBatch, max_symbols: int) -> list[BarBatch]:
    """Split a batch into ceil(n / max_symbols) batches numbered chunk = 0..chunks-1, same ts_event."""
    if max_symbols < 1:
        raise ValueError(f"max_symbols must be >= 1, got {max_symbols}")
    n = len(batch.symbols)
    if n <= max_symbols:
        return [batch]
    if batch.chunks != 1:
        raise ValueError(f"batch is already chunk {batch.chunk} of {batch.chunks}; cannot split it again")
    count = math.ceil(n / max_symbols)
    out = []
    for i in range(count):
        part = slice(i * max_symbols, (i + 1) * max_symbols)
        out.append(msgspec.structs.replace(
            batch, symbols=batch.symbols[part], open=batch.open[part], high=batch.high[part],
            low=batch.low[part], close=batch.close[part], volume=batch.volume[part], chunk=i, chunks=count,
        ))
    return out
