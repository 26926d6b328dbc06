"""`qmp import` against a real PostgreSQL (a database of the test's own): files of both shapes, bad rows
dead-lettered, the bars as written, an interrupted import resumed, a repeated one writing nothing twice."""

import gzip
from pathlib import Path

import asyncpg
import numpy as np
import pandas as pd
import pytest

from qmp_ops.history_import import SourceError, copy_binary, import_bars, source_files

pytestmark = pytest.mark.integration

NOW_NS = int(pd.Timestamp("2024-06-01", tz="UTC").value)


class Interrupted(Exception):
    """The import stopped mid-way (as by a crash or Ctrl-C), after some chunks were committed."""


def per_symbol_frame(seed: int, days: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, days)))
    dates = pd.bdate_range("2020-01-01", periods=days)
    return pd.DataFrame({"Date": dates.strftime("%Y-%m-%d"), "Open": close * 0.995, "High": close * 1.01,
                         "Low": close * 0.99, "Close": close, "Volume": (close * 37).astype(np.int64)})


def write_sources(directory: Path, days: int = 300) -> dict[str, pd.DataFrame]:
    """Two one-symbol files (one gzip-compressed) and a long file with bad rows among good ones."""
    directory.mkdir()
    frames = {"AAPL": per_symbol_frame(1, days), "MSFT": per_symbol_frame(2, days)}
    frames["AAPL"].to_csv(directory / "AAPL.csv", index=False)
    with gzip.open(directory / "MSFT.csv.gz", "wt") as handle:
        frames["MSFT"].to_csv(handle, index=False)
    (directory / "long.csv").write_text(
        "ts,symbol,open,high,low,close,volume\n"
        "2021-03-01 14:30:00,BTC-USD,10,11,9,10.5,5\n"       # line 2: good
        "2021-03-01 14:30:00,BTC-USD,10,11,9,10.5,5\n"       # line 3: the same bar again
        "2021-03-01 14:31:00,BTC-USD,10,9,11,10,5\n"         # line 4: high below low
        "not-a-time,BTC-USD,10,11,9,10,5\n"                  # line 5: unreadable timestamp
        "2021-03-01 14:32:00,BTC-USD,10,11,9,abc,5\n"        # line 6: a close that is no number
        "2031-03-01 14:32:00,BTC-USD,10,11,9,10,5\n"         # line 7: from the future
        "2021-03-01 14:33:00,,10,11,9,10,5\n"                # line 8: no symbol
        "2021-03-01 14:34:00,ETH-USD,1e300,1e300,1e300,1e300,5\n"  # line 9: a price no instrument has
        "2021-03-01 14:35:00,ETH-USD,2,3,1,2.5,7\n")         # line 10: good
    (directory / "notes.txt").write_text("not a source")
    return frames


async def test_import_when_files_of_both_shapes_then_bars_as_in_files_and_bad_rows_dead_lettered(
        own_database: str, tmp_path: Path) -> None:
    frames = write_sources(tmp_path / "src")
    seen: list[tuple[int, int]] = []

    report = await import_bars(own_database, [tmp_path / "src"], "hist", threads=3, chunk_rows=64, now_ns=NOW_NS,
                               progress=lambda done, total: seen.append((done, total)))

    assert report.files == 3 and not report.failed_files
    assert report.rows == 600 + 9 and report.imported == 600 + 2 and report.rejected == 7
    assert report.already_stored == 0 and report.chunks_skipped == 0
    assert sum(done for done, _ in seen) == sum(total for _, total in seen) == report.rows
    db = await asyncpg.connect(own_database)
    try:
        rows = await db.fetch("SELECT ts, open, high, low, close, volume FROM bars WHERE venue = 'hist' AND "
                              "symbol = 'AAPL' ORDER BY ts")
        letters = {r["subject"]: r["reason"] for r in await db.fetch(
            "SELECT subject, reason FROM dead_letters WHERE service = 'import'")}
        eth = await db.fetchrow("SELECT ts, close, volume FROM bars WHERE venue = 'hist' AND symbol = 'ETH-USD'")
    finally:
        await db.close()
    aapl = frames["AAPL"]
    assert len(rows) == len(aapl)
    # Dates alone are the day's close, 21:00 UTC; the values are the file's, to the last bit.
    assert rows[0]["ts"] == pd.Timestamp(aapl["Date"][0] + " 21:00", tz="UTC").to_pydatetime()
    assert [r["close"] for r in rows] == aapl["Close"].tolist()
    assert [r["volume"] for r in rows] == aapl["Volume"].astype(float).tolist()
    assert eth["ts"] == pd.Timestamp("2021-03-01 14:35", tz="UTC").to_pydatetime() and eth["close"] == 2.5
    assert letters["long.csv:3"] == "the same symbol and timestamp earlier in the file"
    assert letters["long.csv:4"].startswith("high below low")
    assert letters["long.csv:5"] == "unreadable timestamp"
    assert letters["long.csv:6"].startswith("non-finite price")
    assert letters["long.csv:7"].startswith("timestamp in the future")
    assert letters["long.csv:8"] == "no symbol"
    assert letters["long.csv:9"].startswith("price above")
    assert len(letters) == 7


async def test_import_when_interrupted_then_resumed_and_when_repeated_then_nothing_twice(
        own_database: str, tmp_path: Path) -> None:
    write_sources(tmp_path / "src", days=500)
    chunks_done = 0

    def stop_after_three(done: int, total: int) -> None:
        nonlocal chunks_done
        chunks_done += done > 0
        if chunks_done == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        await import_bars(own_database, [tmp_path / "src"], "hist", threads=1, chunk_rows=50, now_ns=NOW_NS,
                          progress=stop_after_three)
    db = await asyncpg.connect(own_database)
    try:
        partial = await db.fetchval("SELECT count(*) FROM bars WHERE venue = 'hist'")
        resumed = await import_bars(own_database, [tmp_path / "src"], "hist", threads=2, chunk_rows=50,
                                    now_ns=NOW_NS)
        repeated = await import_bars(own_database, [tmp_path / "src"], "hist", threads=2, chunk_rows=50,
                                     now_ns=NOW_NS)
        total = await db.fetchval("SELECT count(*) FROM bars WHERE venue = 'hist'")
        letters = await db.fetchval("SELECT count(*) FROM dead_letters WHERE service = 'import'")
    finally:
        await db.close()
    assert 0 < partial < 1002
    assert resumed.chunks_skipped >= 2 and resumed.imported == 1002 - partial and resumed.already_stored == 0
    assert total == 1002 and letters == 7
    assert repeated.imported == 0 and repeated.chunks_written == 0 and repeated.chunks_skipped == 21


async def test_import_when_another_file_holds_bars_stored_already_then_only_new_ones_written(
        own_database: str, tmp_path: Path) -> None:
    frames = write_sources(tmp_path / "src")
    await import_bars(own_database, [tmp_path / "src" / "AAPL.csv"], "hist", now_ns=NOW_NS)
    longer = per_symbol_frame(1, 320)  # the same 300 days, and 20 more
    assert longer.head(300).equals(frames["AAPL"])
    (tmp_path / "more").mkdir()
    longer.to_csv(tmp_path / "more" / "AAPL.csv", index=False)

    report = await import_bars(own_database, [tmp_path / "more"], "hist", now_ns=NOW_NS)

    assert report.imported == 20 and report.already_stored == 300
    db = await asyncpg.connect(own_database)
    try:
        assert await db.fetchval("SELECT count(*) FROM bars WHERE venue = 'hist' AND symbol = 'AAPL'") == 320
    finally:
        await db.close()


async def test_import_when_a_file_cannot_be_read_then_reported_and_the_others_imported(
        own_database: str, tmp_path: Path) -> None:
    write_sources(tmp_path / "src")
    (tmp_path / "src" / "wide.csv").write_text("Date,A,B\n2021-01-04,10.0,11.0\n")

    report = await import_bars(own_database, [tmp_path / "src"], "hist", now_ns=NOW_NS)

    assert report.imported == 602 and list(report.failed_files) == [str(tmp_path / "src" / "wide.csv")]
    assert "needs columns" in report.failed_files[str(tmp_path / "src" / "wide.csv")]
    with pytest.raises(SourceError, match="neither a file nor a directory"):
        source_files(tmp_path / "nowhere")
    with pytest.raises(SourceError, match="holds no"):
        (tmp_path / "empty").mkdir()
        source_files(tmp_path / "empty")


async def test_copy_binary_when_symbols_of_several_lengths_then_postgres_reads_every_value(
        own_database: str) -> None:
    ts = np.array([1_600_000_000_000_000_000 + k * 1_000 for k in range(5)], dtype=np.int64)
    symbols = np.array(["A", "BBBB", "CC", "A", "ÉTÉ"], dtype=object)
    values = np.arange(25, dtype=np.float64).reshape(5, 5) + 0.125
    db = await asyncpg.connect(own_database)
    try:
        import io
        await db.copy_to_table("bars", source=io.BytesIO(copy_binary(ts, "vv", symbols, values)), format="binary",
                               columns=["ts", "venue", "symbol", "open", "high", "low", "close", "volume"])
        rows = await db.fetch("SELECT ts, symbol, open, volume FROM bars WHERE venue = 'vv'")
    finally:
        await db.close()
    got = sorted((r["ts"], r["symbol"], r["open"], r["volume"]) for r in rows)
    expected = sorted((pd.Timestamp(int(t), tz="UTC").to_pydatetime(), s, v[0], v[4])
                      for t, s, v in zip(ts, symbols, values, strict=True))
    assert got == expected


def test_import_command_when_run_twice_then_second_writes_nothing_and_unreadable_file_exits_1(
        own_database: str, nats_credentials, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from qmp_ops.cli.main import STACK_VARIABLES, app

    for name in STACK_VARIABLES:
        monkeypatch.setenv(name, "")
    write_sources(tmp_path / "src")
    flags = ["--nats-url", nats_credentials.url, "--database-url", own_database]

    first = CliRunner().invoke(app, [*flags, "import", "--source", str(tmp_path / "src"), "--venue", "cli",
                                     "--threads", "2"])
    again = CliRunner().invoke(app, [*flags, "import", "--source", str(tmp_path / "src"), "--venue", "cli"])
    (tmp_path / "bad.csv").write_text("Date,A\n2021-01-04,1\n")
    bad = CliRunner().invoke(app, [*flags, "import", "--source", str(tmp_path / "bad.csv"), "--venue", "cli"])

    assert first.exit_code == 0, first.output
    assert "602 bars new under venue cli" in first.output and "7 rejected" in first.output
    assert again.exit_code == 0 and "0 bars new" in again.output and "3 done by an earlier run" in again.output
    assert bad.exit_code == 1 and "not imported" in bad.output and "needs columns" in bad.output
