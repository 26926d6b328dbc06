"""What tracing and metrics cost: the market-data path with both on against both off, in the same run.

Each round runs the market-data path of `bench_market_data.py` (a collector process publishing synthetic
bars with an ack per batch and storing them, a risk process taking every bar; timed from the first bar on
the stream to risk's last ack) twice, each on a fresh stack:
- on: as `qmp up` runs it: every span recorded and exported to the run directory, each service serving
  Prometheus metrics, scraped once a second by this process (Prometheus scrapes every 15 s by default);
- off: `QMP_TRACING=false` (OpenTelemetry's no-op spans) and no metrics endpoint. The counters are still
  counted in the services (prometheus-client has no switch); the endpoint and its scrapes are what is off.
The two runs of a round swap their order each round, so a machine that slows down over time does not favour
either. Printed: bars per second of each, on / off per round, and min / median / max over the rounds.

    .venv/bin/python tests/bench/bench_telemetry.py [--symbols 1000] [--batches 1000] [--rounds 3] [--json]
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_market_data import BAR_SECONDS, START, VENUE, through_stack  # noqa: E402

from qmp_ops.runtime.supervisor import Stack, StackOptions  # noqa: E402

SCRAPE_EVERY_S = 1.0
SERVICES = ("risk", "collector")


class Scraper:
    """Fetch every service's /metrics once a period in a thread, as a Prometheus server would."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SCRAPE_EVERY_S):
            for port in self.ports.values():
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
                    self.scrapes += 1
                except OSError:
                    pass  # not serving yet: the service is starting

    def __enter__(self) -> "Scraper":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def one_run(symbols: int, batches: int, telemetry: bool) -> dict:
    home = Path(tempfile.mkdtemp(prefix="qmp-bench-telemetry-"))
    collector = {"QMP_SOURCE": "synthetic", "QMP_SYMBOLS": str(symbols), "QMP_VENUE": VENUE, "QMP_START": START,
                 "QMP_BAR_SECONDS": str(BAR_SECONDS), "QMP_MAX_BATCHES": str(batches), "QMP_REPLAY_RATE": "0"}
    off = {} if telemetry else {"QMP_TRACING": "false"}
    stack = Stack(StackOptions(home=home, clock="replay", share_connection=False, services=SERVICES,
                               metrics=telemetry, service_env={"collector": collector | off, "risk": dict(off)}))
    try:
        stack.start_servers()
        with Scraper(stack.metrics_ports) as scraper:
            result = asyncio.run(through_stack(stack, symbols, batches))
    finally:
        stack.stop()
    # Counted once the services have stopped: each flushes its last spans to the files as it ends.
    spans = sum(1 for path in (stack.run_dir / "traces").glob("*.jsonl") for _ in path.open("rb"))
    return result | {"scrapes": scraper.scrapes, "spans": spans}


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=1000)
    # A run of 300 batches lasts about a second and a half here: too short to tell 5% from the noise.
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.symbols < 10 or args.batches < 2:
        parser.error("at least 10 symbols and 2 batches")
    rounds = []
    for index in range(args.rounds):
        order = (True, False) if index % 2 == 0 else (False, True)
        runs = {}
        for telemetry in order:
            print(f"round {index + 1}/{args.rounds}: telemetry {'on' if telemetry else 'off'}", file=sys.stderr,
                  flush=True)
            runs["on" if telemetry else "off"] = one_run(args.symbols, args.batches, telemetry)
        cpu = {name: sum(run["cpu_us_per_bar"].values()) for name, run in runs.items()}
        rounds.append({**runs, "on_over_off": round(runs["on"]["bars_per_s"] / runs["off"]["bars_per_s"], 4),
                       "cpu_on_over_off": round(cpu["on"] / cpu["off"], 4)})
    result = {
        "symbols": args.symbols, "batches": args.batches, "bars": args.symbols * args.batches,
        "load_average": [round(x, 2) for x in psutil.getloadavg()],
        "on_bars_per_s": spread([r["on"]["bars_per_s"] for r in rounds]),
        "off_bars_per_s": spread([r["off"]["bars_per_s"] for r in rounds]),
        "on_over_off": spread([r["on_over_off"] for r in rounds]),
        "cpu_on_over_off": spread([r["cpu_on_over_off"] for r in rounds]),
        "goal": "on_over_off >= 0.9",
        "rounds": rounds,
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    print(f"{result['bars']:,} bars ({args.symbols} symbols x {args.batches} batches) per run, "
          f"load {result['load_average']}")
    for r in rounds:
        print(f"  on {r['on']['bars_per_s']:>10,.0f} bars/s ({r['on']['spans']} spans, {r['on']['scrapes']} scrapes)"
              f"   off {r['off']['bars_per_s']:>10,.0f} bars/s ({r['off']['spans']} spans)   on/off "
              f"{r['on_over_off']:.3f} (CPU per bar, collector and risk: on/off {r['cpu_on_over_off']:.3f})")
    for name in ("on_bars_per_s", "off_bars_per_s", "on_over_off", "cpu_on_over_off"):
        s = result[name]
        print(f"  {name:16s} min {s['min']:>12,.4g}  median {s['median']:>12,.4g}  max {s['max']:>12,.4g}")
    print("  goal: with tracing and metrics on, at least 90% of the throughput without them (on_over_off >= 0.9)")


if __name__ == "__main__":
    main()
